//! Token ids equal transformers' CLIPTokenizer (tools/golden/make_tokenizers.py) for plain
//! prompts, punctuation, digits, accents, emoji, CJK, repeated whitespace, the empty prompt
//! and a prompt longer than 77 tokens, for both SDXL tokenizers (pad EOS / pad "!").

mod common;

use common::*;
use mapo::models::clip::tokenizer::ClipTokenizer;

#[test]
fn ids_match_transformers() {
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer_prompts.json")).unwrap()).unwrap();
    let f = open("tokenizer_ids.safetensors");
    for name in ["tokenizer", "tokenizer_2"] {
        let tok = ClipTokenizer::from_dir(&fixtures().join("tiny-sdxl").join(name)).unwrap();
        let want = f
            .get(&format!("{name}.input_ids"))
            .unwrap()
            .to_data_any()
            .unwrap()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let got = tok.encode(prompt);
            assert_eq!(got, want[i * 77..(i + 1) * 77], "{name}: {prompt:?}");
        }
    }
}

/// open_clip's cleaning (ftfy.fix_text, html.unescape twice, whitespace, lower case) on
/// prompts with curly quotes, ligatures, full-width text, HTML entities and control
/// characters, against open_clip 3.3.0 + ftfy 6.3.1 (tools/golden/make_open_clip_clean.py).
#[test]
fn open_clip_cleaning_matches_open_clip() {
    let text = std::fs::read_to_string(fixtures().join("open_clip_clean.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() > 20);
    let mut wrong = Vec::new();
    for c in cases {
        let (input, want) = (c["text"].as_str().unwrap(), c["clean"].as_str().unwrap());
        let got = mapo::models::clip::clean::open_clip_clean(input);
        if got != want {
            wrong.push(format!("{input:?}: got {got:?}, open_clip {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The HPS tokenizer cleans; the transformers one (PickScore, SDXL) does not.
    let dir = fixtures().join("tiny-sdxl/tokenizer");
    let plain = ClipTokenizer::from_dir(&dir).unwrap();
    let open_clip = ClipTokenizer::from_dir(&dir).unwrap().with_open_clip_cleaning();
    assert_eq!(open_clip.encode("a dog’s &amp; “cat”"), plain.encode("a dog's & \"cat\""));
    assert_ne!(plain.encode("a dog’s &amp; cat"), plain.encode("a dog's & cat"));
}

/// The built-in CLIP vocabulary (the 49,408 tokens rebuilt from open_clip's BPE file, for
/// single files without tokenizers) gives transformers' ids on it, for both SDXL
/// tokenizers (tools/golden/make_builtin_vocab.py).
#[test]
fn the_builtin_vocabulary_gives_transformers_ids() {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("builtin_vocab_ids.json")).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("mapo-builtin-vocab-{}", std::process::id()));
    for (key, pad, sub) in [("input_ids", "<|endoftext|>", "tokenizer"), ("input_ids_2", "!", "tokenizer_2")] {
        mapo::models::clip::builtin_vocab::write_clip_tokenizer(&dir.join(sub), pad).unwrap();
        let tok = ClipTokenizer::from_dir(&dir.join(sub)).unwrap();
        for (prompt, ids) in want["prompts"].as_array().unwrap().iter().zip(want[key].as_array().unwrap()) {
            let ids: Vec<i64> = ids.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(tok.encode(prompt.as_str().unwrap()), ids, "{sub}: {prompt}");
        }
    }
    let (vocab, _) = mapo::models::clip::builtin_vocab::clip_vocab_files().unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&vocab).unwrap();
    assert_eq!(vocab.len(), want["vocab_size"].as_u64().unwrap() as usize);
    let _ = std::fs::remove_dir_all(&dir);
}
