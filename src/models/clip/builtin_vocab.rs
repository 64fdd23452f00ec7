//! CLIP's 49,408-token BPE vocabulary, shipped with the binary as open_clip ships it
//! (`assets/clip/bpe_simple_vocab_16e6.txt.gz`, MIT, from the open_clip_torch wheel), and
//! rebuilt the way open_clip's `SimpleTokenizer` builds it: the 256 byte characters, the
//! same with `</w>`, the first 48,894 merges joined, then `<|startoftext|>` and
//! `<|endoftext|>`. transformers' CLIP `vocab.json` and `merges.txt` are this vocabulary
//! (tests/tokenizer.rs checks ids against transformers on it: tools/golden/make_builtin_vocab.py).

use std::io::Read;

use anyhow::{Context, Result};

const BPE_GZ: &[u8] = include_bytes!("../../../assets/clip/bpe_simple_vocab_16e6.txt.gz");

/// The merges CLIP uses: lines 1..=48894 of the file (line 0 is a version header).
const MERGES: usize = 49152 - 256 - 2;

/// `(vocab.json, merges.txt)` as transformers writes them for CLIP.
pub fn clip_vocab_files() -> Result<(String, String)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_GZ).read_to_string(&mut text).context("the built-in CLIP vocabulary")?;
    let merges: Vec<&str> = text.split('\n').skip(1).take(MERGES).collect();
    anyhow::ensure!(
        merges.len() == MERGES,
        "the built-in CLIP vocabulary has {} merges, expected {MERGES}",
        merges.len()
    );
    let bytes: Vec<String> = super::tokenizer::byte_chars().into_iter().map(|(_, c)| c.to_string()).collect();
    let tokens = bytes
        .iter()
        .cloned()
        .chain(bytes.iter().map(|b| format!("{b}</w>")))
        .chain(merges.iter().map(|m| m.split(' ').collect::<String>()))
        .chain(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.enumerate().map(|(i, t)| (t, serde_json::Value::from(i))).collect();
    anyhow::ensure!(vocab.len() == 49408, "the built-in CLIP vocabulary has {} distinct tokens", vocab.len());
    Ok((serde_json::to_string(&vocab)?, format!("#version: 0.2\n{}\n", merges.join("\n"))))
}

/// Writes a transformers CLIP tokenizer folder (`pad`: `<|endoftext|>` for SDXL's first
/// tokenizer, `!` for its second).
pub fn write_clip_tokenizer(dir: &std::path::Path, pad: &str) -> Result<()> {
    let (vocab, merges) = clip_vocab_files()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::util::write_atomic(&dir.join("vocab.json"), vocab.as_bytes())?;
    crate::util::write_atomic(&dir.join("merges.txt"), merges.as_bytes())?;
    let config = serde_json::json!({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": true,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
    });
    crate::util::write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())
}
