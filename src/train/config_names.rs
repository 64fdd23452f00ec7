//! The config names users bring from diffusers' training scripts and accelerate
//! (`max_train_steps`, `learning_rate`, `mixed_precision = "bf16"`, ...), accepted beside
//! mapo's own, and an unknown key answered with the closest known one.

use anyhow::{Result, bail};

/// (diffusers/accelerate name, the mapo key it sets; `a.b` for a key of table `a`).
pub const ALIASES: &[(&str, &str)] = &[
    ("max_train_steps", "steps"),
    ("train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accumulation"),
    ("lr_scheduler", "lr_schedule"),
    ("lr_warmup_steps", "warmup_steps"),
    ("checkpointing_steps", "checkpoint_every"),
    ("checkpoints_total_limit", "keep_checkpoints"),
    ("mixed_precision", "dtype"),
    ("pretrained_model_name_or_path", "model"),
    ("learning_rate", "optimizer.lr"),
    ("adam_beta1", "optimizer.beta1"),
    ("adam_beta2", "optimizer.beta2"),
    ("adam_epsilon", "optimizer.eps"),
    ("adam_weight_decay", "optimizer.weight_decay"),
];

/// Sectioned spellings of flat keys (`[checkpoint] every` for `checkpoint_every`), so that a
/// run file reads in sections like an experiment file: (section, key, the flat key). The
/// `[data]` section also takes the data source itself as `pairs`, `cache`, `parquet` or
/// `path` (the experiment's spelling).
pub const SECTIONED: &[(&str, &str, &str)] = &[
    ("checkpoint", "every", "checkpoint_every"),
    ("checkpoint", "keep", "keep_checkpoints"),
    ("validation", "every", "validation_every"),
    ("validation", "prompts", "validation_prompts"),
    ("validation", "steps", "validation_steps"),
    ("validation", "guidance", "validation_guidance"),
    ("parallel", "devices", "devices"),
    ("parallel", "device", "device"),
    ("data", "transform", "data_transform"),
    ("data", "read", "data_read"),
    ("data", "pairs", "data"),
    ("data", "cache", "data"),
    ("data", "parquet", "data"),
    ("data", "path", "data"),
];

/// Moves the keys of `[checkpoint]`, `[validation]`, `[parallel]` and `[data]` tables to
/// their flat names; an unknown key in one of them is an error naming the section.
fn flatten_sections(table: &mut toml::Table, origin: &str) -> Result<()> {
    for section in ["checkpoint", "validation", "parallel", "data"] {
        let Some(toml::Value::Table(inner)) = table.get(section) else { continue };
        let mut inner = inner.clone();
        table.remove(section);
        for (key, value) in std::mem::take(&mut inner) {
            let Some((_, _, flat)) = SECTIONED.iter().find(|(s, k, _)| *s == section && *k == key) else {
                let keys: Vec<&str> = SECTIONED.iter().filter(|(s, _, _)| *s == section).map(|(_, k, _)| *k).collect();
                bail!("{origin}: unknown key {key} in [{section}] (it takes {})", keys.join(", "));
            };
            if table.contains_key(*flat) {
                bail!("{origin}: [{section}] {key} and {flat} are the same setting: keep one");
            }
            table.insert(flat.to_string(), value);
        }
    }
    Ok(())
}

/// The mapo key for `key` (a dotted `--set` path or a top-level name).
pub fn canonical_key(key: &str) -> String {
    if let Some((section, rest)) = key.split_once('.') {
        let (first, tail) = rest.split_once('.').map_or((rest, None), |(a, b)| (a, Some(b)));
        if let Some((_, _, flat)) = SECTIONED.iter().find(|(s, k, _)| *s == section && *k == first) {
            return tail.map_or(flat.to_string(), |t| format!("{flat}.{t}"));
        }
    }
    let (first, rest) = key.split_once('.').map_or((key, None), |(a, b)| (a, Some(b)));
    match ALIASES.iter().find(|(alias, _)| *alias == first) {
        Some((_, to)) => rest.map_or(to.to_string(), |r| format!("{to}.{r}")),
        None => key.to_string(),
    }
}

/// accelerate's `mixed_precision` values ("no", "fp16", "bf16") as mapo's dtypes.
fn precision_value(v: toml::Value) -> toml::Value {
    match v.as_str() {
        Some("no") => toml::Value::String("f32".into()),
        Some("fp16") => toml::Value::String("f16".into()),
        _ => v,
    }
}

/// Rewrites the aliases of a config table to mapo's keys; `origin` names the table in
/// errors (the file, or `[train]`).
pub fn canonicalize(table: &mut toml::Table, origin: &str) -> Result<()> {
    flatten_sections(table, origin)?;
    for (alias, to) in ALIASES {
        let Some(mut value) = table.remove(*alias) else { continue };
        if *alias == "mixed_precision" {
            value = precision_value(value);
        }
        let (section, key) = match to.split_once('.') {
            Some((s, k)) => (Some(s), k),
            None => (None, *to),
        };
        let target = match section {
            Some(s) => {
                let entry = table.entry(s.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
                let Some(t) = entry.as_table_mut() else { bail!("{origin}: {s} is not a table") };
                t
            }
            None => &mut *table,
        };
        if target.contains_key(key) {
            bail!("{origin}: both {alias} and {to} are set (they are the same setting: keep one)");
        }
        target.insert(key.to_string(), value);
    }
    Ok(())
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The known key closest to `key`, when it is close enough to be a typo.
pub fn closest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let best = known.into_iter().map(|k| (distance(key, k), k)).min()?;
    (best.0 <= (key.len() / 3).max(2)).then_some(best.1)
}

/// A config's sections and their keys (`("lora", ["rank", "alpha", ...])`), so that a key
/// written at the top level, flat (`resolution`) or with its section as a prefix
/// (`lora_rank`), is answered with where it belongs.
pub type Sections = [(&'static str, Vec<String>)];

/// The section key a misplaced top-level `key` most likely means: `(section, key)`.
pub fn misplaced<'a>(key: &str, sections: &'a Sections) -> Option<(&'a str, &'a str)> {
    let find = |section: &'a str, keys: &'a [String], k: &str| {
        keys.iter().find(|c| c.as_str() == k).map(|c| (section, c.as_str()))
    };
    sections.iter().find_map(|(section, keys)| {
        let bare = key.strip_prefix(section).and_then(|k| k.strip_prefix(['_', '.']));
        bare.and_then(|k| find(section, keys, k)).or_else(|| find(section, keys, key))
    })
}

/// Fails on a key of `table` that is neither in `known` nor an alias: a key of one of
/// `sections` is answered with its section, anything else with the closest known key;
/// `origin` says where the key came from.
pub fn check_known(
    table: &toml::Table,
    known: &[String],
    sections: &Sections,
    origin: &dyn Fn(&str) -> String,
) -> Result<()> {
    let names = || known.iter().map(String::as_str).chain(ALIASES.iter().map(|(a, _)| *a));
    for key in table.keys() {
        if names().any(|k| k == key) {
            continue;
        }
        if let Some((section, k)) = misplaced(key, sections) {
            bail!(
                "{}: unknown key {key}: it belongs in the [{section}] section as {k} ([{section}] {k} = ...)",
                origin(key)
            );
        }
        let hint = closest(key, names()).map_or(String::new(), |c| format!(" (did you mean {c}?)"));
        bail!("{}: unknown key {key}{hint}", origin(key));
    }
    Ok(())
}
