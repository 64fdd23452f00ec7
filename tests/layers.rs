//! The layering of DESIGN §1: models, losses and data (and the small `util`) import
//! nothing from train, experiment, bench, cli, eval or the built-in experiment's `toy`
//! (they are the library's base; the others build on them).

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn base_layers_import_nothing_from_the_layers_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for layer in ["models", "losses", "data", "util.rs"] {
        let mut files = Vec::new();
        if layer.ends_with(".rs") {
            files.push(src.join(layer));
        } else {
            rust_files(&src.join(layer), &mut files);
        }
        assert!(!files.is_empty(), "no files under src/{layer}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                for above in ["cli", "train", "bench", "experiment", "toy", "eval"] {
                    if line.contains(&format!("crate::{above}::")) || line.contains(&format!("crate::{above};")) {
                        bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports from a layer above:\n{}", bad.join("\n"));
}
