//! A word-level tokenizer for the built-in experiment's grammar: the tiny text encoder
//! needs ids, not CLIP's BPE (whose vocabulary is 49k entries for a 16-word language).

use anyhow::{Result, bail};

use super::data::{BACKGROUNDS, COLOURS, SHAPES};

/// Tokens per caption: `<bos>`, up to 8 words, `<eos>`, then `<pad>`.
pub const SEQ_LEN: usize = 10;

/// `<pad>`, `<bos>`, the grammar's words (sorted), `<eos>` last: its id is the vocabulary
/// size − 1, which is what the text encoder's `eos_token_id` names.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = ["a", "on", "background"]
        .into_iter()
        .chain(SHAPES)
        .chain(COLOURS.iter().map(|c| c.0))
        .chain(BACKGROUNDS.iter().map(|b| b.0))
        .map(String::from)
        .collect();
    words.sort();
    words.dedup();
    let mut v = vec!["<pad>".to_string(), "<bos>".to_string()];
    v.extend(words);
    v.push("<eos>".into());
    v
}

/// Ids of `caption` padded to `SEQ_LEN`; an unknown word or a caption too long is an error.
pub fn tokenize(vocab: &[String], caption: &str) -> Result<Vec<i64>> {
    let id = |w: &str| vocab.iter().position(|v| v == w).map(|i| i as i64);
    let mut ids = vec![id("<bos>").expect("vocabulary has <bos>")];
    for word in caption.split_whitespace() {
        match id(&word.to_lowercase()) {
            Some(i) => ids.push(i),
            None => bail!("caption {caption:?}: word {word:?} is not in the built-in vocabulary"),
        }
    }
    ids.push(id("<eos>").expect("vocabulary has <eos>"));
    if ids.len() > SEQ_LEN {
        bail!("caption {caption:?}: {} tokens, the built-in text encoder takes {SEQ_LEN}", ids.len());
    }
    ids.resize(SEQ_LEN, 0);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::data::Subject;

    #[test]
    fn every_caption_tokenizes_and_unknown_words_fail() {
        let v = vocabulary();
        for s in Subject::all() {
            let ids = tokenize(&v, &s.caption()).unwrap();
            assert_eq!(ids.len(), SEQ_LEN);
            assert_eq!(ids[0], 1);
            assert!(ids.contains(&(v.len() as i64 - 1)));
        }
        let err = tokenize(&v, "a purple circle").unwrap_err().to_string();
        assert!(err.contains("\"purple\""), "{err}");
    }
}
