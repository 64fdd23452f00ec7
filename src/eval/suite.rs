//! Prompt suites: a text file (one prompt per line), JSON lines (`"prompt"` or
//! `"caption"`, or the named field), or parquet (a file, folder or `*` pattern; the
//! `caption` column or the named one, e.g. Pick-a-Pic's test split). A preference split
//! repeats a caption for each of its pairs: parquet suites keep each caption once, in
//! first-seen order. Blank prompts are left out; an empty suite is an error.

use std::path::Path;

use anyhow::{Context, Result, ensure};

/// The suite's first `max` prompts (all when `None`; at least one).
pub fn load_suite(path: &Path, column: Option<&str>, max: Option<usize>) -> Result<Vec<String>> {
    let mut prompts = read_prompts(path, column)?;
    prompts.truncate(max.unwrap_or(usize::MAX).max(1));
    Ok(prompts)
}

pub fn read_prompts(path: &Path, column: Option<&str>) -> Result<Vec<String>> {
    let text = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parquet = ext == "parquet" || path.is_dir() || path.to_string_lossy().contains('*');
    let prompts: Vec<String> = if parquet {
        let column = column.unwrap_or("caption");
        let (rows, skipped) = crate::data::parquet::read_text_column(path, column)?;
        let total = rows.len();
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<String> = rows
            .into_iter()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty() && seen.insert(r.clone()))
            .collect();
        eprintln!(
            "prompts: {} distinct of {total} {column:?} values in {}{}",
            unique.len(),
            path.display(),
            if skipped > 0 { format!(" ({skipped} null or non-text rows skipped)") } else { String::new() }
        );
        unique
    } else if ext == "jsonl" {
        let mut out = Vec::new();
        for (i, line) in text(path)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = || format!("{} line {}", path.display(), i + 1);
            let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
            let p = match column {
                Some(c) => v.get(c),
                None => v.get("prompt").or_else(|| v.get("caption")),
            };
            let want = column.map_or("\"prompt\" or \"caption\"".to_string(), |c| format!("{c:?}"));
            let p = p.and_then(|p| p.as_str()).with_context(|| format!("{}: no text field {want}", at()))?;
            out.push(p.trim().to_string());
        }
        out
    } else {
        ensure!(
            column.is_none(),
            "{}: a text file has no columns (--prompt-column is for JSON lines and parquet)",
            path.display()
        );
        text(path)?.lines().map(|l| l.trim().to_string()).collect()
    };
    let prompts: Vec<String> = prompts.into_iter().filter(|p| !p.is_empty()).collect();
    ensure!(!prompts.is_empty(), "{}: an empty prompt suite", path.display());
    Ok(prompts)
}
