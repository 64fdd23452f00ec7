//! The layering of docs/design.md §1, checked over the whole crate: each top-level module of
//! `src/` may import only the modules its row of `ALLOWED` names, the table itself has no
//! cycle (so no two modules import each other, directly or around a loop), and the
//! foundation (models, losses, data, sample, objective) and the toy's lower half import
//! nothing above them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top: a module may import the modules its row lists, nothing else of the crate.
const ALLOWED: &[(&str, &str)] = &[
    ("util", ""),
    ("device", "util"),
    ("models", "util device"),
    ("losses", "util device"),
    ("sample", "models util device"),
    ("objective", "sample models util device"),
    ("data", "models sample util device"),
    ("toy", "models util device"),
    ("family", "models sample objective data toy util device"),
    ("train", "family models losses sample objective data util device"),
    ("eval", "family models sample objective data toy util device"),
    ("online", "train eval family models losses sample objective data toy util device"),
    ("experiment", "online train eval family models losses sample objective data toy util device"),
    ("bench", "online train eval family models losses sample objective data util device"),
    ("cli", "experiment bench online train eval family models losses sample objective data toy util device"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a source text names through `crate::` (`crate::a::b`,
/// `crate::a;`, and each first segment inside `crate::{a, b::c}`).
fn imports(text: &str) -> BTreeSet<String> {
    imports_at(text).into_iter().map(|(m, _)| m).collect()
}

/// [`imports`] with the byte offset of each `crate::` that names them.
fn imports_at(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    out.push((name, i));
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((name, i));
            }
        }
    }
    out
}

fn table() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    ALLOWED.iter().map(|(m, a)| (*m, a.split_whitespace().collect())).collect()
}

#[test]
fn the_allowed_table_has_no_cycle() {
    let t = table();
    // Kahn's algorithm: every module must be removable once what it imports is removed.
    let mut left: BTreeMap<&str, BTreeSet<&str>> = t.clone();
    while !left.is_empty() {
        let free: Vec<&str> =
            left.iter().filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d))).map(|(m, _)| *m).collect();
        assert!(!free.is_empty(), "the layering table has a cycle among {:?}", left.keys().collect::<Vec<_>>());
        for m in free {
            left.remove(m);
        }
    }
    for (m, deps) in &t {
        for d in deps {
            assert!(t.contains_key(d), "{m} may import {d}, which has no row");
        }
    }
}

#[test]
fn every_module_imports_only_what_its_row_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let t = table();
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let Some(allowed) = t.get(name.as_str()) else {
            bad.push(format!("src/{name}: a top-level module without a row in tests/layers.rs ALLOWED"));
            continue;
        };
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // The whole text, not line by line: a `use crate::{...}` group may span lines.
            for (m, at) in imports_at(&text) {
                if m != name && !allowed.contains(m.as_str()) && t.contains_key(m.as_str()) {
                    let line = text[..at].lines().count().max(1);
                    bad.push(format!("{}:{line}: {name} imports {m}", f.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports the layering does not allow:\n{}", bad.join("\n"));
}

#[test]
fn the_import_parser_sees_every_form() {
    let found =
        imports("use crate::{models::unet::X,\n    util};\nlet a = crate::train::run::train(); use crate::eval;");
    assert_eq!(found, ["eval", "models", "train", "util"].map(String::from).into_iter().collect());
}
