//! The model-family seam: a folder's family from `model_index.json` or its denoiser's
//! config, and a folder whose denoiser config cannot be built refused by name before any work.

mod common;

use mapo::family::Family;
use mapo::objective::ObjectiveName;

fn folder(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-family-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

#[test]
fn families_are_read_from_the_pipeline_or_the_denoiser() {
    assert_eq!(Family::detect(&common::fixtures().join("tiny-sdxl")).unwrap(), Family::Sdxl);
    assert_eq!(Family::detect(&common::fixtures().join("tiny-sdxl/unet")).unwrap(), Family::Sdxl);
    let sd3 = folder("sd3", &[("model_index.json", r#"{"_class_name": "StableDiffusion3Pipeline"}"#)]);
    assert_eq!(Family::detect(&sd3).unwrap(), Family::Sd3);
    let flux = folder("flux", &[("transformer/config.json", r#"{"_class_name": "FluxTransformer2DModel"}"#)]);
    assert_eq!(Family::detect(&flux).unwrap(), Family::Flux);
    assert_eq!((Family::Sdxl.objective(), Family::Flux.objective()), (ObjectiveName::Epsilon, ObjectiveName::Flow));
    assert_eq!(Family::Sd3.denoiser_folder(), "transformer");
    let empty = folder("empty", &[("README", "")]);
    let err = Family::detect(&empty).unwrap_err().to_string();
    assert!(err.contains("not a model folder"), "{err}");
    let bad = folder("bad", &[("model_index.json", "{")]);
    assert!(Family::detect(&bad).unwrap_err().to_string().contains("model_index.json"));
    for d in [sd3, flux, empty, bad] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_broken_denoiser_config_is_refused_by_name_before_any_work() {
    let sd3 = folder(
        "flux-train",
        &[
            ("model_index.json", r#"{"_class_name": "FluxPipeline"}"#),
            ("transformer/config.json", r#"{"_class_name": "FluxTransformer2DModel"}"#),
        ],
    );
    let config = sd3.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ndata = \"pairs.safetensors\"\noutput_dir = {:?}\nmethod = \"mapo\"\nsteps = 1\n",
            sd3,
            sd3.join("out")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["train", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let named = stderr.contains("transformer/config.json") && stderr.contains("in_channels");
    assert!(!out.status.success() && named, "{stderr}");
    assert!(!sd3.join("out").exists(), "nothing is written for a refused run");
    std::fs::remove_dir_all(&sd3).unwrap();
}
