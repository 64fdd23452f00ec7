//! LoRA files in diffusers/PEFT and kohya layouts (fixtures: tools/golden/make_lora_formats.py):
//! each applied by `mapo forward unet --lora` gives what diffusers' `load_lora_weights`
//! gives; `mapo lora convert` writes the kohya file that diffusers was shown; bad files are
//! errors that name the modules at fault.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};
use mapo::models::lora::BlockLayout;
use mapo::models::lora::sgm::{from_sgm, kohya_name, layer_of_kohya, to_sgm};

/// f32 like diffusers; measured 2.8e-7 on flex, while the adapters change the output by
/// 6.8e-3 (relative), so a wrong scale or a layer mapped to the wrong block fails.
const TOL: f32 = 1e-5;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-lora-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn lora_fixture(name: &str) -> PathBuf {
    fixtures().join("lora").join(name)
}

/// `mapo forward unet --lora FILE` on the golden inputs.
fn forward_with(lora: &Path, out: &Path) -> std::process::Output {
    let model = fixtures().join("tiny-sdxl");
    let inputs = lora_fixture("inputs.safetensors");
    std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["forward", "unet", "--device", &device_name(), "--model", model.to_str().unwrap()])
        .args(["--inputs", inputs.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--lora", lora.to_str().unwrap()])
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap()
}

fn sample_of(path: &Path) -> Tensor<4> {
    SafeTensorFiles::open_file(path).unwrap().float::<4>("sample", &device(), DType::F32).unwrap()
}

fn expected(key: &str) -> Tensor<4> {
    open("lora/expected.safetensors").float::<4>(key, &device(), DType::F32).unwrap()
}

fn check_forward(what: &str, lora: &Path, want: &str) {
    let out = tmp(&format!("{want}-{}.safetensors", what.replace(' ', "_")));
    let run = forward_with(lora, &out);
    assert!(run.status.success(), "{what}: {}", String::from_utf8_lossy(&run.stderr));
    assert_close(what, sample_of(&out), expected(want), TOL);
}

#[test]
fn sgm_names_follow_sd_scripts_and_round_trip() {
    let sdxl = BlockLayout::uniform(2, 3);
    for (diffusers, sgm) in [
        (
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        ),
        ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
        ("down_blocks.0.resnets.1.time_emb_proj", "input_blocks.2.0.emb_layers.1"),
        ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
        ("mid_block.attentions.0.transformer_blocks.9.ff.net.2", "middle_block.1.transformer_blocks.9.ff.net.2"),
        ("mid_block.resnets.1.conv1", "middle_block.2.in_layers.2"),
        (
            "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0",
            "output_blocks.2.1.transformer_blocks.0.attn2.to_out.0",
        ),
        ("up_blocks.1.resnets.2.conv_shortcut", "output_blocks.5.0.skip_connection"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
    ] {
        assert_eq!(to_sgm(diffusers, &sdxl).unwrap(), sgm, "{diffusers}");
        assert_eq!(from_sgm(sgm, &sdxl).unwrap(), diffusers, "{sgm}");
    }
    assert_eq!(
        layer_of_kohya("lora_unet_output_blocks_1_1_transformer_blocks_0_ff_net_0_proj", &sdxl).unwrap(),
        "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj"
    );
    // The diffusers spelling with `_` (some converters write it) is read too.
    assert_eq!(
        layer_of_kohya("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0", &sdxl).unwrap(),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"
    );
    // A model with one layer per block numbers its blocks differently.
    let one = BlockLayout::uniform(1, 3);
    assert_eq!(to_sgm("down_blocks.1.attentions.0.proj_out", &one).unwrap(), "input_blocks.3.1.proj_out");
    assert_eq!(to_sgm("up_blocks.1.attentions.1.proj_out", &one).unwrap(), "output_blocks.3.1.proj_out");
    assert!(to_sgm("down_blocks.1.attentions.2.proj_out", &sdxl).is_err(), "a layer past the block's count");

    // Every linear layer of the tiny UNet has a kohya name that maps back to it.
    let dir = fixtures().join("tiny-sdxl/unet");
    let (unet, config) = mapo::models::unet::UNet2DConditionModel::from_dir(&dir, &device(), DType::F32).unwrap();
    let layout = BlockLayout::of(&config).unwrap();
    let mut linear = 0;
    for (name, shape) in mapo::models::named::param_shapes(&unet) {
        let Some(layer) = name.strip_suffix(".weight").filter(|_| shape.len() == 2) else { continue };
        let kohya = kohya_name(layer, &layout).unwrap();
        assert_eq!(layer_of_kohya(&kohya, &layout).unwrap(), layer, "{kohya}");
        linear += 1;
    }
    assert!(linear > 50, "only {linear} linear layers");
}

#[test]
fn a_diffusers_peft_file_gives_diffusers_output() {
    check_forward("peft file", &lora_fixture("peft.safetensors"), "peft");
}

#[test]
fn a_kohya_file_gives_diffusers_output() {
    check_forward("kohya file", &lora_fixture("kohya.safetensors"), "kohya");
}

#[test]
fn convert_writes_the_kohya_file_diffusers_loads() {
    let out = tmp("converted-kohya.safetensors");
    let input = lora_fixture("peft.safetensors");
    run_mapo(&["lora", "convert", "--in", input.to_str().unwrap(), "--to", "kohya", "--out", out.to_str().unwrap()]);
    // Exactly the tensors diffusers was shown when the fixture was made.
    let (got, shown) = (SafeTensorFiles::open_file(&out).unwrap(), open("lora/mapo_kohya.safetensors"));
    let names = |f: &SafeTensorFiles| f.names().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&shown));
    for name in names(&got) {
        let (a, b) = (got.get(&name).unwrap().to_data().unwrap(), shown.get(&name).unwrap().to_data().unwrap());
        assert_eq!(a.as_bytes(), b.as_bytes(), "{name}");
    }
    check_forward("mapo kohya file", &out, "mapo_kohya");

    // ... and back: the peft file made from it gives the same output again.
    let back = tmp("back-to-peft.safetensors");
    run_mapo(&["lora", "convert", "--in", out.to_str().unwrap(), "--to", "peft", "--out", back.to_str().unwrap()]);
    check_forward("kohya → peft", &back, "peft");
    let kohya_to_peft = tmp("kohya-to-peft.safetensors");
    let kohya = lora_fixture("kohya.safetensors");
    run_mapo(&[
        "lora",
        "convert",
        "--in",
        kohya.to_str().unwrap(),
        "--to",
        "peft",
        "--out",
        kohya_to_peft.to_str().unwrap(),
    ]);
    check_forward("sd-scripts kohya → peft", &kohya_to_peft, "kohya");
}

fn adapter_file(path: &Path, entries: &[(&str, [usize; 2])]) {
    let tensors = entries
        .iter()
        .map(|(name, shape)| (name.to_string(), TensorData::new(vec![0.01f32; shape[0] * shape[1]], shape.to_vec())))
        .collect();
    write_tensors(path, tensors).unwrap();
}

fn forward_error(lora: &Path) -> String {
    let out = forward_with(lora, &tmp("never.safetensors"));
    assert!(!out.status.success(), "{} was accepted", lora.display());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn bad_lora_files_are_errors_that_name_the_modules() {
    let q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
    let unknown = tmp("unknown.safetensors");
    adapter_file(
        &unknown,
        &[
            (&format!("{q}.lora_A.weight"), [2, 32]),
            (&format!("{q}.lora_B.weight"), [32, 2]),
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn9.to_q.lora_A.weight", [2, 32]),
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn9.to_q.lora_B.weight", [32, 2]),
        ],
    );
    let e = forward_error(&unknown);
    assert!(e.contains("the UNet does not have") && e.contains("attn9.to_q"), "{e}");

    let ranks = tmp("ranks.safetensors");
    adapter_file(&ranks, &[(&format!("{q}.lora_A.weight"), [2, 32]), (&format!("{q}.lora_B.weight"), [32, 3])]);
    let e = forward_error(&ranks);
    assert!(e.contains("disagree on the rank") && e.contains("attn1.to_q"), "{e}");

    let shape = tmp("shape.safetensors");
    adapter_file(&shape, &[(&format!("{q}.lora_A.weight"), [2, 7]), (&format!("{q}.lora_B.weight"), [32, 2])]);
    let e = forward_error(&shape);
    assert!(e.contains("do not fit their layer") && e.contains("attn1.to_q"), "{e}");

    let text = tmp("text.safetensors");
    adapter_file(
        &text,
        &[
            ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", [2, 32]),
            ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", [32, 2]),
        ],
    );
    let e = forward_error(&text);
    assert!(e.contains("text-encoder adapters") && e.contains("lora_te1_text_model"), "{e}");

    let none = tmp("none.safetensors");
    adapter_file(&none, &[("something", [2, 2])]);
    assert!(forward_error(&none).contains("no LoRA adapters"));
}

/// `mapo train` with `[lora]` writes both formats; they agree with each other.
#[test]
fn a_lora_run_writes_peft_and_kohya_files_that_agree() {
    let dir = std::env::temp_dir().join(format!("mapo-lora-formats-run-{}", std::process::id()));
    let run = tiny_lora_run(&dir, "sft", "5e-2", "8x8");
    let peft = run.join("pytorch_lora_weights.safetensors");
    let kohya = run.join("pytorch_lora_weights_kohya.safetensors");
    let kohya_file = SafeTensorFiles::open_file(&kohya).unwrap();
    assert!(kohya_file.names().all(|n| n.starts_with("lora_unet_")), "kohya keys");
    assert_eq!(kohya_file.metadata("ss_network_module"), Some("networks.lora"));
    let (a, b) = (tmp("run-peft.safetensors"), tmp("run-kohya.safetensors"));
    for (file, out) in [(&peft, &a), (&kohya, &b)] {
        let o = forward_with(file, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_close("kohya vs peft file of one run", sample_of(&b), sample_of(&a), 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}
