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
