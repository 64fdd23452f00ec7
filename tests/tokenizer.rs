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
        let want =
            f.get(&format!("{name}.input_ids")).unwrap().to_data_any().convert::<i64>().try_to_vec::<i64>().unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let got = tok.encode(prompt);
            assert_eq!(got, want[i * 77..(i + 1) * 77], "{name}: {prompt:?}");
        }
    }
}
