//! CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer` runs it: NFC,
//! whitespace runs to one space, lower case; split into words, numbers (one digit each) and
//! punctuation runs; byte-to-unicode mapping; BPE with a `</w>` end-of-word suffix; then
//! `<|startoftext|> … <|endoftext|>`, truncated and padded to 77.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

pub const MAX_LENGTH: usize = 77;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    vocab: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pieces: Regex,
    whitespace: Regex,
    bos: i64,
    eos: i64,
    pad: i64,
    pad_token: String,
    /// open_clip's ftfy + HTML cleaning first (`clean::open_clip_clean`).
    open_clip_cleaning: bool,
}

/// GPT-2's reversible byte → printable character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    for (b, c) in byte_chars() {
        table[b as usize] = c;
    }
    table
}

/// The (byte, character) pairs of GPT-2's table in its own order (printable bytes first),
/// which is the order of the first 256 ids of CLIP's vocabulary.
pub(super) fn byte_chars() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable.into_iter().zip(chars).map(|(b, c)| (b as u8, char::from_u32(c).expect("valid char"))).collect()
}

impl ClipTokenizer {
    /// Reads `vocab.json`, `merges.txt` and (for the pad token) `tokenizer_config.json` or
    /// `special_tokens_map.json` from a diffusers `tokenizer*/` folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let text = std::fs::read_to_string(&vocab_path).with_context(|| format!("reading {}", vocab_path.display()))?;
        let vocab: HashMap<String, i64> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON token → id map", vocab_path.display()))?;
        let merges_path = dir.join("merges.txt");
        let text =
            std::fs::read_to_string(&merges_path).with_context(|| format!("reading {}", merges_path.display()))?;
        let mut ranks = HashMap::new();
        for (i, line) in text.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).enumerate() {
            let Some((a, b)) = line.split_once(' ') else {
                bail!("{}: line {:?} is not a merge `a b`", merges_path.display(), line);
            };
            ranks.insert((a.to_string(), b.to_string()), i);
        }
        let id = |t: &str| vocab.get(t).copied().with_context(|| format!("{}: no token {t:?}", vocab_path.display()));
        let pad_token = pad_token(dir)?;
        Ok(Self {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(&pad_token)?,
            byte_encoder: bytes_to_unicode(),
            pieces: Regex::new(
                r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            )
            .expect("valid regex"),
            whitespace: Regex::new(r"\s+").expect("valid regex"),
            vocab,
            ranks,
            pad_token,
            open_clip_cleaning: false,
        })
    }

    /// Cleans text as open_clip's tokenizer does before its BPE (HPS checkpoints).
    pub fn with_open_clip_cleaning(mut self) -> Self {
        self.open_clip_cleaning = true;
        self
    }

    /// The ids of `text` without BOS/EOS, truncation or padding. Special tokens (BOS, EOS
    /// and the pad token, which is "!" for SDXL's second tokenizer) are cut out of the raw
    /// text first and map straight to their ids, as transformers' added tokens do.
    pub fn encode_raw(&self, text: &str) -> Vec<i64> {
        let cleaned;
        let text = if self.open_clip_cleaning {
            cleaned = super::clean::open_clip_clean(text);
            cleaned.as_str()
        } else {
            text
        };
        let specials = [(BOS, self.bos), (EOS, self.eos), (self.pad_token.as_str(), self.pad)];
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = specials.iter().filter_map(|(t, id)| rest.find(t).map(|at| (at, t.len(), *id))).min();
            match next {
                Some((at, len, id)) => {
                    self.encode_segment(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_segment(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    fn encode_segment(&self, text: &str, ids: &mut Vec<i64>) {
        let normalized: String = text.nfc().collect();
        let normalized = self.whitespace.replace_all(&normalized, " ").to_lowercase();
        for piece in self.pieces.find_iter(&normalized).map(|m| m.as_str()) {
            let word: Vec<char> = piece.bytes().map(|b| self.byte_encoder[b as usize]).collect();
            // Unknown symbols become the unknown token, <|endoftext|>.
            ids.extend(self.bpe(&word).iter().map(|s| self.vocab.get(s).copied().unwrap_or(self.eos)));
        }
    }

    /// Warns, as diffusers does, when `text` is longer than the 75 tokens CLIP reads (the
    /// first few times in a process: a dataset of long captions would flood the log).
    pub fn warn_if_truncated(&self, text: &str) {
        static WARNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        const SHOWN: usize = 3;
        let n = self.encode_raw(text).len();
        if n > MAX_LENGTH - 2 {
            let seen = WARNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if seen < SHOWN {
                let shown: String = text.chars().take(60).collect();
                eprintln!(
                    "warning: the prompt {shown:?}{} is {n} tokens; CLIP reads {} and the rest is truncated{}",
                    if shown.len() < text.len() { "…" } else { "" },
                    MAX_LENGTH - 2,
                    if seen + 1 == SHOWN { " (further truncations are not reported)" } else { "" }
                );
            }
        }
    }

    /// `[BOS] ids [EOS]`, the content truncated to 75 tokens, padded to 77.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut content = self.encode_raw(text);
        content.truncate(MAX_LENGTH - 2);
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(self.bos);
        ids.extend(content);
        ids.push(self.eos);
        ids.resize(MAX_LENGTH, self.pad);
        ids
    }

    /// Merges adjacent symbols by merge rank, lowest first, until no ranked pair is left.
    fn bpe(&self, word: &[char]) -> Vec<String> {
        let mut symbols: Vec<String> = word.iter().map(|c| c.to_string()).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|r| (*r, p[0].clone(), p[1].clone())))
                .min();
            let Some((_, a, b)) = best else { break };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

/// The pad token named by `tokenizer_config.json` or `special_tokens_map.json` (a string or
/// `{"content": ...}`), else `<|endoftext|>`.
fn pad_token(dir: &Path) -> Result<String> {
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        match &v["pad_token"] {
            serde_json::Value::String(s) => return Ok(s.clone()),
            serde_json::Value::Object(o) => {
                if let Some(s) = o.get("content").and_then(|c| c.as_str()) {
                    return Ok(s.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(EOS.to_string())
}
