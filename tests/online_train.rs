//! Online training end to end on the built-in model (a briefly pretrained flow reference,
//! 16×16 images, its grammar's prompts, the stripe reward): GRPO, DiffusionNFT and online
//! pairs runs killed with SIGKILL after their first checkpoint resume to exactly the
//! uninterrupted runs' metrics and weights (the old policy and the refreshed reference are
//! in the checkpoints, every draw is keyed by seed and iteration); and the `[online]`
//! settings that cannot work are refused when the config is read, naming the option.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use mapo::experiment::toy::pretrain::{PretrainConfig, reference};
use mapo::objective::{FlowConfig, ObjectiveName};

fn mapo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).env("MAPO_QUIET_DEVICE", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The toy reference, pretrained for a few steps with the flow objective (shared by the
/// tests of this file through the cache folder).
fn toy_model() -> PathBuf {
    toy_reference(ObjectiveName::Flow)
}

fn toy_reference(objective: ObjectiveName) -> PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = std::env::temp_dir().join("mapo-online-toy-cache");
    let flow = (objective == ObjectiveName::Flow).then(|| FlowConfig { shift: 1.0, ..Default::default() });
    let p = PretrainConfig { steps: 6, objective, flow, ..Default::default() };
    reference(&cache, &p, Some("flex")).unwrap().0
}

/// A run folder `<dir>/run` and its config: `method` online on the toy model, 4 iterations
/// of 2 prompts × 4 samples, 4 sampling steps, a checkpoint after every iteration.
fn setup(name: &str, method: &str, extra: &str) -> (PathBuf, PathBuf) {
    let objective = "objective = \"flow\"\n[flow]\nshift = 1.0\n";
    setup_with(name, method, extra, &toy_model(), objective)
}

/// [`setup`] for `model` trained with `objective` (its config lines).
fn setup_with(name: &str, method: &str, extra: &str, model: &Path, objective: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mapo-online-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\noutput_dir = {:?}\nmethod = \"{method}\"\nsteps = 1\nbatch_size = 4\n\
             checkpoint_every = 1\nkeep_checkpoints = 5\ndevice = \"flex\"\nseed = 3\n{objective}{extra}\n\
             [optimizer]\nlr = 1e-3\n\
             [online]\niterations = 4\nprompts_per_iteration = 2\ngroup_size = 4\nsampling_steps = 4\nguidance = 2.0\n\
             ref_update_steps = 1\n[online.rewards]\nstripes = 1.0\nfidelity = 0.5\n",
            dir.join("run")
        ),
    )
    .unwrap();
    (dir, config)
}

fn train(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    args.extend(extra);
    mapo(&args)
}

/// Runs `method` uninterrupted into `<dir>/full`, then again killed once its first
/// checkpoint exists and resumed; both must agree exactly.
fn kill_and_resume(name: &str, method: &str, extra: &str) {
    let (dir, config) = setup(name, method, extra);
    kill_and_resume_in(&dir, &config);
}

fn kill_and_resume_in(dir: &Path, config: &Path) {
    let (dir, config) = (dir.to_path_buf(), config.to_path_buf());
    let full = train(&config, &["--set", &format!("output_dir={:?}", dir.join("full"))]);
    assert!(full.status.success(), "{}", stderr(&full));
    let run = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["train", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("checkpoint-1/state.json").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!run.join("checkpoint-4").exists(), "the run finished before it was killed: nothing was resumed");
    let out = train(&config, &["--resume", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (got, want) = (metric_lines(&run), metric_lines(&dir.join("full")));
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got, want);
    // The run trained: rewards were scored and updates applied.
    assert!(want.iter().all(|l| l["reward"].as_f64().is_some_and(f64::is_finite)), "{want:?}");
    assert!(want.iter().map(|l| l["updates"].as_u64().unwrap()).sum::<u64>() > 0, "{want:?}");
    let weights = |d: &Path| std::fs::read(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(weights(&run) == weights(&dir.join("full")), "final weights differ");
    let model =
        std::fs::read_to_string(&config).unwrap().lines().next().unwrap().trim_start_matches("model = ").to_string();
    let model = PathBuf::from(model.trim_matches('"'));
    assert!(weights(&run) != std::fs::read(model.join("unet/diffusion_pytorch_model.safetensors")).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grpo_resumes_exactly_after_kill_9() {
    kill_and_resume("grpo", "grpo", "");
}

#[test]
fn nft_resumes_exactly_after_kill_9_with_its_old_policy() {
    // The old policy follows θ by a decay that is not 0 from the second iteration on.
    kill_and_resume("nft", "nft", "[method_params]\ndecay_rate = 0.2");
}

#[test]
fn online_pairs_resume_exactly_after_kill_9_with_their_refreshed_reference() {
    kill_and_resume("pairs", "mapo", "");
}

#[test]
fn ddpo_resumes_exactly_after_kill_9() {
    // DDPO trains an ε-prediction model: the toy reference pretrained with ε, DDIM with η = 1.
    let model = toy_reference(ObjectiveName::Epsilon);
    let (dir, config) = setup_with("ddpo", "ddpo", "", &model, "");
    kill_and_resume_in(&dir, &config);
    // The objectives' methods do not mix, and η = 0 has no log-probabilities: named refusals.
    let (flow_dir, flow_config) = setup("ddpo-flow", "ddpo", "");
    let out = train(&flow_config, &[]);
    assert!(stderr(&out).contains("method ddpo trains ε-prediction models"), "{}", stderr(&out));
    let (eps_dir, eps_config) = setup_with("grpo-eps", "grpo", "", &model, "");
    let out = train(&eps_config, &[]);
    assert!(stderr(&out).contains("method grpo trains flow-matching models"), "{}", stderr(&out));
    let out = train(&eps_config, &["--set", "method=\"ddpo\"", "--set", "online.eta=0.0"]);
    assert!(stderr(&out).contains("[online] eta = 0"), "{}", stderr(&out));
    for d in [flow_dir, eps_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn impossible_online_settings_are_refused_when_read() {
    let (dir, config) = setup("refuse", "grpo", "");
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "online.group_size=1"], "[online] group_size 1: a group needs at least 2 samples"),
        (&["--set", "online.noise_level=0.0"], "[online] noise_level = 0"),
        (&["--set", "online.rewards={}"], "[online] rewards is empty"),
        (&["--set", "online.rewards={aesthetic = 1.0}"], "[online.rewards] \"aesthetic\""),
        (&["--set", "method=\"kto\""], "online pairs need a pair method"),
    ];
    for (args, want) in cases {
        let out = train(&config, args);
        assert!(!out.status.success() && stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // An online method without [online] says what to add.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().split("[online]").next().unwrap().to_string() + "\n",
    )
    .unwrap();
    let out = train(&config, &[]);
    assert!(stderr(&out).contains("add an [online] section"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The GRPO and NFT passes with gradient checkpointing (the prediction a leaf, each block's
/// backward rerun from its saved input) train the same weights as through the whole graph:
/// two iterations of each, every final weight within 1e-3 of the largest change the training
/// made (measured: 2e-4 for GRPO). The two paths sum the same gradients in another order, and
/// AdamW's normalised update magnifies those ~1e-7 differences (the FLUX train-step test
/// measured 8.6e-5 for the same reason); a wrong gradient differs by the change itself.
#[test]
fn gradient_checkpointing_trains_the_same_online() {
    for method in ["grpo", "nft"] {
        let (dir, config) = setup(&format!("ckpt-{method}"), method, "");
        let run = |name: &str, ckpt: bool| {
            let out_dir = dir.join(name);
            let out = train(
                &config,
                &[
                    "--set",
                    &format!("output_dir={out_dir:?}"),
                    "--set",
                    "online.iterations=2",
                    "--set",
                    &format!("gradient_checkpointing={ckpt}"),
                ],
            );
            assert!(out.status.success(), "{}", stderr(&out));
            all_weights(&out_dir.join("unet/diffusion_pytorch_model.safetensors"))
        };
        let (whole, ckpt) = (run("whole", false), run("ckpt", true));
        let base = all_weights(&toy_model().join("unet/diffusion_pytorch_model.safetensors"));
        let change = whole.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let diff = whole.iter().zip(&ckpt).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{method}: largest change {change:e}, largest difference {diff:e}");
        assert!(change > 0.0, "{method}: nothing trained");
        assert!(diff <= 1e-3 * change, "{method}: {diff:e} apart (change {change:e})");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Every tensor of a safetensors file, by name, flattened into one list.
fn all_weights(path: &Path) -> Vec<f32> {
    let files = mapo::models::io::SafeTensorFiles::open_file(path).unwrap();
    let mut names: Vec<String> = files.names().map(str::to_string).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| files.get(n).unwrap().to_data().unwrap().convert::<f32>().try_to_vec::<f32>().unwrap())
        .collect()
}

/// A diffusers model's online run: the tiny SD3.5 pipeline, prompts from a suite, PickScore
/// (the tiny CLIP fixture) as the reward, LoRA adapters; GRPO (SDE, CFG) and NFT (its old
/// policy as LoRA adapters on the shared base) train, log the reward by name, and write the
/// adapters and the merged transformer as offline runs do.
#[test]
fn sd3_online_runs_with_a_prompt_suite_and_a_reward_model() {
    let dir = std::env::temp_dir().join(format!("mapo-online-sd3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a photo of a cat\na red bicycle\na bowl of soup\n").unwrap();
    for method in ["grpo", "nft"] {
        let out_dir = dir.join(method);
        let config = dir.join(format!("{method}.toml"));
        std::fs::write(
            &config,
            format!(
                "model = {:?}\noutput_dir = {out_dir:?}\nmethod = \"{method}\"\nsteps = 1\nbatch_size = 2\n\
                 device = \"flex\"\nseed = 1\n[optimizer]\nlr = 1e-3\n[lora]\nrank = 2\nalpha = 4\n\
                 [online]\niterations = 2\nprompts = {prompts:?}\nprompts_per_iteration = 2\ngroup_size = 2\n\
                 sampling_steps = 3\nguidance = 2.0\n[online.rewards]\npickscore = 1.0\n\
                 [online.reward_models]\npickscore = {:?}\n",
                fixtures().join("tiny-sd35"),
                fixtures().join("tiny-clip")
            ),
        )
        .unwrap();
        let out = train(&config, &[]);
        assert!(out.status.success(), "{method}: {}", stderr(&out));
        let lines = metric_lines(&out_dir);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert!(l["reward_pickscore"].as_f64().is_some_and(f64::is_finite), "{l}");
            assert_eq!(l["samples"], 4, "{l}");
        }
        assert!(lines.iter().map(|l| l["updates"].as_u64().unwrap()).sum::<u64>() > 0, "{lines:?}");
        assert!(out_dir.join("pytorch_lora_weights.safetensors").is_file());
        assert!(out_dir.join("transformer/config.json").is_file());
    }
    // A reward without its model file is named.
    let config = dir.join("grpo.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[online.reward_models]\npickscore", "[online.reward_models]\nclip");
    std::fs::write(&config, text).unwrap();
    let out = train(&config, &["--set", &format!("output_dir={:?}", dir.join("missing"))]);
    assert!(
        stderr(&out).contains("[online.rewards] pickscore: give its model in [online.reward_models]"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
