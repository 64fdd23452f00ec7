//! Config keys from diffusers' training scripts and accelerate are accepted beside mapo's
//! own; an unknown key is an error that suggests the closest known one and says whether it
//! came from the file or from `--set`.

use std::path::PathBuf;

use mapo::train::config::TrainConfig;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-config-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const HEAD: &str = "model = \"m\"\ndata = \"d\"\noutput_dir = \"o\"\nmethod = \"mapo\"\n";

fn load(name: &str, body: &str, sets: &[&str]) -> anyhow::Result<TrainConfig> {
    let path = write(name, &format!("{HEAD}{body}"));
    TrainConfig::load(&path, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn as_toml(c: &TrainConfig) -> String {
    toml::to_string(c).unwrap()
}

#[test]
fn diffusers_and_accelerate_names_set_the_same_config() {
    let ours = load(
        "ours.toml",
        "steps = 40\nbatch_size = 3\ngrad_accumulation = 2\nlr_schedule = \"cosine\"\nwarmup_steps = 5\n\
         checkpoint_every = 10\nkeep_checkpoints = 3\ndtype = \"bf16\"\n\
         [optimizer]\nlr = 2e-5\nbeta1 = 0.8\nbeta2 = 0.99\neps = 1e-6\nweight_decay = 0.03\n",
        &[],
    )
    .unwrap();
    let theirs = load(
        "theirs.toml",
        "max_train_steps = 40\ntrain_batch_size = 3\ngradient_accumulation_steps = 2\nlr_scheduler = \"cosine\"\n\
         lr_warmup_steps = 5\ncheckpointing_steps = 10\ncheckpoints_total_limit = 3\nmixed_precision = \"bf16\"\n\
         learning_rate = 2e-5\nadam_beta1 = 0.8\nadam_beta2 = 0.99\nadam_epsilon = 1e-6\nadam_weight_decay = 0.03\n",
        &[],
    )
    .unwrap();
    assert_eq!(as_toml(&ours), as_toml(&theirs));
    assert_eq!(theirs.steps, 40);
    assert_eq!(theirs.optimizer.lr, 2e-5);

    // accelerate's precision names.
    assert_eq!(load("no.toml", "steps = 1\nmixed_precision = \"no\"\n", &[]).unwrap().dtype, "f32");
    assert_eq!(load("fp16.toml", "steps = 1\nmixed_precision = \"fp16\"\n", &[]).unwrap().dtype, "f16");

    // An override by either name wins over the file's setting by the other.
    let c = load("lr.toml", "steps = 1\n[optimizer]\nlr = 1e-5\n", &["learning_rate=3e-4"]).unwrap();
    assert_eq!(c.optimizer.lr, 3e-4);
    let c = load("steps.toml", "max_train_steps = 100\n", &["steps=7"]).unwrap();
    assert_eq!(c.steps, 7);
    let c = load("steps2.toml", "steps = 100\n", &["max_train_steps=8"]).unwrap();
    assert_eq!(c.steps, 8);
}

#[test]
fn unknown_and_doubled_keys_are_errors_that_help() {
    let e = load("typo.toml", "max_train_stpes = 10\n", &[]).unwrap_err().to_string();
    assert!(
        e.contains("typo.toml") && e.contains("unknown key max_train_stpes (did you mean max_train_steps?)"),
        "{e}"
    );

    let e = load("set-typo.toml", "steps = 10\n", &["bach_size=4"]).unwrap_err().to_string();
    assert!(e.contains("--set bach_size") && e.contains("did you mean batch_size?"), "{e}");

    let e = load("opt-typo.toml", "steps = 10\n[optimizer]\nlrr = 1e-4\n", &[]).unwrap_err().to_string();
    assert!(e.contains("[optimizer]") && e.contains("unknown key lrr (did you mean lr?)"), "{e}");

    let e = load("far.toml", "steps = 10\ncompletely_unrelated = 1\n", &[]).unwrap_err().to_string();
    assert!(e.contains("unknown key completely_unrelated") && !e.contains("did you mean"), "{e}");

    let e = load("both.toml", "steps = 10\nmax_train_steps = 20\n", &[]).unwrap_err().to_string();
    assert!(e.contains("both max_train_steps and steps are set"), "{e}");

    // A bad value from --set is blamed on the --set, not only on the file.
    let e = format!("{:#}", load("value.toml", "steps = 10\n", &["batch_size=\"four\""]).unwrap_err());
    assert!(e.contains("with --set batch_size=\"four\""), "{e}");
}

/// The TOML config and `mapo forward train-step` build their optimizer in one place, so
/// the defaults agree; names are checked as enums.
#[test]
fn optimizers_and_schedules_are_built_alike_and_checked() {
    use mapo::train::optim::OptimizerConfig;
    for name in ["adamw", "adafactor", "sgd"] {
        let c = load(&format!("{name}.toml"), &format!("steps = 1\n[optimizer]\nname = \"{name}\"\nlr = 1e-3\n"), &[])
            .unwrap();
        let cli = OptimizerConfig::parse(name, 1e-3, None).unwrap();
        assert_eq!(format!("{:?}", c.optimizer.build().unwrap()), format!("{cli:?}"), "{name}");
    }
    let e = format!(
        "{:#}",
        load("sgd-wd.toml", "steps = 1\n[optimizer]\nname = \"sgd\"\nweight_decay = 0.01\n", &[]).unwrap_err()
    );
    assert!(e.contains("takes no weight decay"), "{e}");
    let e = format!("{:#}", load("sched.toml", "steps = 1\nlr_schedule = \"cosin\"\n", &[]).unwrap_err());
    assert!(e.contains("unknown variant") && e.contains("cosine"), "{e}");
    let e = format!("{:#}", load("opt.toml", "steps = 1\n[optimizer]\nname = \"adam\"\n", &[]).unwrap_err());
    assert!(e.contains("unknown variant") && e.contains("adamw"), "{e}");
}

/// A section's key written at the top level, flat or with the section as a prefix, is
/// answered with the section it belongs in (in a train file and in an experiment's [train]).
#[test]
fn misplaced_section_keys_name_their_section() {
    for (body, want) in [
        ("steps = 1\nlora_rank = 4\n", "it belongs in the [lora] section as rank"),
        ("steps = 1\nresolution = 64\n", "it belongs in the [data_transform] section as resolution"),
        ("steps = 1\nshift = 3.0\n", "it belongs in the [flow] section as shift"),
        ("steps = 1\nlr = 1e-4\n", "it belongs in the [optimizer] section as lr"),
    ] {
        let err = format!("{:#}", load("misplaced.toml", body, &[]).unwrap_err());
        assert!(err.contains(want), "{body:?}: {err}");
    }
    let err = format!("{:#}", load("misplaced-set.toml", "steps = 1\n", &["lora_alpha=8"]).unwrap_err());
    assert!(err.contains("--set lora_alpha") && err.contains("[lora] section as alpha"), "{err}");
}

/// A run file may be written in sections, as an experiment file is: `[data]` with the
/// source and its `transform`, `[checkpoint]`, `[validation]`, `[parallel]`; it is the same
/// config as the flat keys, and `--set section.key` overrides either spelling.
#[test]
fn sectioned_run_files_are_the_flat_config() {
    let flat = load(
        "flat.toml",
        "steps = 4\ncheckpoint_every = 2\nkeep_checkpoints = 3\nvalidation_every = 2\nvalidation_steps = 5\n\
         devices = [\"flex\", \"flex\"]\n[data_transform]\nresolution = 512\n",
        &[],
    )
    .unwrap();
    let path = write(
        "sections.toml",
        "model = \"m\"\noutput_dir = \"o\"\nmethod = \"mapo\"\nsteps = 4\n[data]\npairs = \"d\"\n\
         [data.transform]\nresolution = 512\n[checkpoint]\nevery = 2\nkeep = 3\n[validation]\nevery = 2\nsteps = 5\n\
         [parallel]\ndevices = [\"flex\", \"flex\"]\n",
    );
    let sectioned = TrainConfig::load(&path, &[]).unwrap();
    assert_eq!(as_toml(&flat), as_toml(&sectioned));
    let set = TrainConfig::load(&path, &["checkpoint.every=3".to_string()]).unwrap();
    assert_eq!(set.checkpoint_every, 3);
    let err = format!("{:#}", load("bad-section.toml", "steps = 1\n[checkpoint]\nevry = 2\n", &[]).unwrap_err());
    assert!(err.contains("unknown key evry in [checkpoint]") && err.contains("every, keep"), "{err}");
}
