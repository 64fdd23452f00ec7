//! T5's tokenizer from its `tokenizer.json` through Hugging Face's `tokenizers` crate (the
//! library transformers' fast tokenizers are), as SD3's pipeline calls it:
//! `padding="max_length", truncation=True, add_special_tokens=True` — the content cut to
//! `max_length − 1` tokens, `</s>` appended, `<pad>` after.

use std::path::Path;

use anyhow::{Context, Result};

pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: u32,
    pad: u32,
}

impl T5Tokenizer {
    /// `dir/tokenizer.json` (a diffusers `tokenizer_3/` folder, or a T5 model folder).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: not a readable tokenizer.json: {e}", path.display()))?;
        let id = |t: &str| inner.token_to_id(t).with_context(|| format!("{}: no {t} token", path.display()));
        let (eos, pad) = (id("</s>")?, id("<pad>")?);
        Ok(Self { inner, eos, pad })
    }

    /// `max_length` ids: the prompt's tokens (at most `max_length − 1`), `</s>`, then `<pad>`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Vec<i64>> {
        let encoding = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        let mut ids: Vec<i64> =
            encoding.get_ids().iter().take(max_length.saturating_sub(1)).map(|&i| i as i64).collect();
        ids.push(self.eos as i64);
        ids.resize(max_length, self.pad as i64);
        Ok(ids)
    }

    /// diffusers' warning when `max_length` cuts the prompt (T5 keeps `max_length − 1`
    /// content tokens); shown for the first few prompts of a run only.
    pub fn warn_if_truncated(&self, text: &str, max_length: usize) {
        static WARNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        const SHOWN: usize = 3;
        let Ok(encoding) = self.inner.encode(text, false) else { return };
        let n = encoding.get_ids().len();
        if n + 1 > max_length && WARNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < SHOWN {
            let shown: String = text.chars().take(60).collect();
            eprintln!(
                "warning: the prompt {shown:?}{} is {n} T5 tokens; --max-sequence-length {max_length} keeps {} and \
                 truncates the rest",
                if shown.len() < text.len() { "…" } else { "" },
                max_length.saturating_sub(1)
            );
        }
    }
}
