"""Parity fixtures for the SD3-style T5 v1.1 text encoder (tiny config), made with transformers
and tokenizers.

Writes:
  tests/fixtures/tiny-t5/tokenizer.json   a Unigram tokenizer trained on the small corpus below,
                                          with the pipeline of a real T5 v1.1 tokenizer.json minus
                                          its Precompiled (sentencepiece charsmap) normalizer:
                                          Replace(" {2,}" -> " "), Metaspace("▁", always, split),
                                          "$A </s>"; <pad> = 0, </s> = 1, <unk> = 2
  tests/fixtures/tiny-t5/config.json      T5EncoderModel, gated-gelu (gelu_new), d_model 32,
  tests/fixtures/tiny-t5/model.safetensors  d_kv 8, 4 heads, d_ff 64, 2 layers, float32,
                                          weights redrawn (std 0.5; layer norms 1 + 0.1 randn)
  tests/fixtures/t5_prompts.json          the prompts, index K
  tests/fixtures/t5_cases.safetensors     ids.K (int64 [1, 16]) as the SD3 pipeline tokenizes
                                          (padding="max_length", max_length=16, truncation=True,
                                          add_special_tokens=True; </s> kept last) and hidden.K
                                          (float32 [1, 16, 32]) = last_hidden_state, no mask

The checkpoint holds `shared.weight` only (transformers 5 always ties encoder.embed_tokens to
it, and its config.json says tie_word_embeddings = true whatever is passed); the relative
attention bias is in block 0 only. The ids equal tokenizers' own Tokenizer with
enable_truncation(16) and enable_padding(length=16, pad_id=0); the hidden states are also
checked against the hand-written encoder in reference_forward (agreement ~5e-6).
Output is reproducible: seeds are fixed and the trained vocabulary is canonicalised.

Run from the repo root:  OMP_NUM_THREADS=1 python3 tools/golden/make_t5.py
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel, T5TokenizerFast

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
ROOT = os.path.join(OUT, "tiny-t5")
MAX_LEN = 16
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

CORPUS = [
    "A photograph of an astronaut riding a horse on the moon.",
    "A red fox sleeping under a tree in the autumn forest.",
    "An oil painting of a lighthouse on a rocky coast at sunset.",
    "Two cats playing with a ball of yarn on a wooden floor.",
    "A cozy cabin in the snowy mountains, warm light in the windows.",
    "A futuristic city skyline at night with flying cars and neon signs.",
    "A bowl of fresh fruit: apples, oranges, bananas and grapes.",
    "The old man reads a newspaper on a park bench in the morning.",
    "A dragon flying over a castle, dramatic clouds, epic fantasy art.",
    "A close-up portrait of a smiling woman with curly hair.",
    "A watercolor sketch of a small boat on a calm blue lake.",
    "A robot cooking breakfast in a bright modern kitchen.",
    "Children building a sandcastle on a sunny beach.",
    "A vintage car parked in front of a diner, 1950s style.",
    "A field of sunflowers under a clear summer sky.",
    "An owl perched on a branch, looking at the camera.",
    "A busy street market with colorful umbrellas and fruit stands.",
    "The cat sat on the mat, and the dog slept by the fire.",
    "A steaming cup of coffee next to an open book.",
    "A waterfall in a tropical jungle with lush green plants.",
    "A knight in shining armor holding a sword and a shield.",
    "A bicycle leaning against a brick wall covered in ivy.",
    "An underwater scene with coral reefs and tropical fish.",
    "A snowy village at Christmas with lights on every house.",
    "A hot air balloon floating over green hills at dawn.",
    "A black and white photo of a train station in the rain.",
    "A plate of spaghetti with tomato sauce and basil leaves.",
    "A spaceship landing on a red desert planet with two suns.",
    "A girl painting a picture of the sea on a large canvas.",
    "A quiet library with tall shelves full of old books.",
    "The quick brown fox jumps over the lazy dog.",
    "3 apples, 12 eggs and 250 grams of flour.",
    "Room 42 is on floor 7; call 555-0199!",
    "Is it 8k, 4k or 1080p? High quality, highly detailed.",
    "Wow! What a beautiful, amazing, stunning view...",
    "A panda eating bamboo (cute, fluffy) in a zoo.",
]

PROMPTS = [
    "a cat on a red chair",
    "Hello, world! A dragon?",
    "room 42, 8k",
    "  a   horse    on  the moon  ",
    "",
    "A photograph of an astronaut riding a horse on the moon, with a futuristic city skyline at night",
    "zebra é#é 9",  # é and # are not in the vocabulary: the run é#é is one fused <unk>
]


def make_tokenizer():
    tok = Tokenizer(models.Unigram())
    # A real T5 v1.1 tokenizer.json has Sequence([Precompiled(charsmap), Replace(" {2,}", " ")]); the
    # charsmap needs a sentencepiece model, so only the Replace is kept.
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=[PAD, EOS, UNK], unk_token=UNK,
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert [tok.token_to_id(t) for t in (PAD, EOS, UNK)] == [0, 1, 2]

    # The trainer is not reproducible run to run (Rust hash-map order): scores move by ~1e-15,
    # and the characters it adds last get scores min, min + 1e-4, ... in a random order, which
    # also reorders the ids. Canonicalise: round, hand that tail's scores out by piece, sort.
    vocab = [(piece, round(score, 6)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    special, rest = vocab[:3], vocab[3:]
    low = min(score for _, score in rest) + 0.01
    tail = sorted(piece for piece, score in rest if score < low)
    tail_scores = sorted((score for _, score in rest if score < low), reverse=True)
    rest = [(piece, score) for piece, score in rest if score >= low] + list(zip(tail, tail_scores))
    rest.sort(key=lambda ps: (-ps[1], ps[0]))
    normalizer, pre_tokenizer, decoder = tok.normalizer, tok.pre_tokenizer, tok.decoder
    tok = Tokenizer(models.Unigram(special + rest, unk_id=2, byte_fallback=False))
    tok.add_special_tokens([PAD, EOS, UNK])
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoder
    assert [tok.token_to_id(t) for t in (PAD, EOS, UNK)] == [0, 1, 2]
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, 1)])
    return tok


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.5 * torch.randn_like(p))


def reference_forward(w, ids, heads=4, eps=1e-6):
    """The encoder written out by hand (what a port must do), checked against transformers."""
    def rms(x, g):
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))

    n = ids.shape[1]
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    bucket = (rel > 0).long() * 16
    a = rel.abs()
    large = 8 + (torch.log(a.float() / 8) / torch.log(torch.tensor(128 / 8)) * 8).long()
    bucket += torch.where(a < 8, a, large.clamp(max=15))
    bias = w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][bucket].permute(2, 0, 1)
    x = w["shared.weight"][ids[0]]
    for b in range(2):
        p = f"encoder.block.{b}.layer."
        h = rms(x, w[p + "0.layer_norm.weight"])
        q, k, v = (h @ w[p + f"0.SelfAttention.{m}.weight"].T for m in "qkv")
        q, k, v = (t.view(n, heads, -1).transpose(0, 1) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1)  # no 1/sqrt(d_kv)
        x = x + (att @ v).transpose(0, 1).reshape(n, -1) @ w[p + "0.SelfAttention.o.weight"].T
        h = rms(x, w[p + "1.layer_norm.weight"])
        f = gelu_new(h @ w[p + "1.DenseReluDense.wi_0.weight"].T) * (h @ w[p + "1.DenseReluDense.wi_1.weight"].T)
        x = x + f @ w[p + "1.DenseReluDense.wo.weight"].T
    return rms(x, w["encoder.final_layer_norm.weight"])[None]


def main():
    torch.manual_seed(0)
    os.makedirs(ROOT, exist_ok=True)
    tok = make_tokenizer()
    tok_path = os.path.join(ROOT, "tokenizer.json")
    tok.save(tok_path)

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(tok_path), pad_token=PAD, eos_token=EOS,
                                     unk_token=UNK)
    t5_tok = T5TokenizerFast(tokenizer_object=Tokenizer.from_file(tok_path), extra_ids=0)
    assert (t5_tok.pad_token_id, t5_tok.eos_token_id, t5_tok.unk_token_id) == (0, 1, 2)
    config = T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                      tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    assert config.dense_act_fn == "gelu_new" and config.is_gated_act
    model = T5EncoderModel(config).to(torch.float32).eval()
    randomize(model)
    model.save_pretrained(ROOT, safe_serialization=True)

    # Reload what was written, so the fixtures come from the saved weights.
    model = T5EncoderModel.from_pretrained(ROOT, torch_dtype=torch.float32).eval()
    weights = load_file(os.path.join(ROOT, "model.safetensors"))
    out = {}
    for k, prompt in enumerate(PROMPTS):
        ids = hf_tok(prompt, padding="max_length", max_length=MAX_LEN, truncation=True, add_special_tokens=True,
                     return_tensors="pt").input_ids
        assert t5_tok(prompt, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids == ids[0].tolist()
        raw = tok.encode(prompt).ids
        want = (raw[:MAX_LEN - 1] + [1] if len(raw) > MAX_LEN else raw) + [0] * max(0, MAX_LEN - len(raw))
        assert ids.tolist() == [want], (prompt, ids.tolist(), want)
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state
        assert hidden.shape == (1, MAX_LEN, 32) and hidden.dtype == torch.float32
        assert torch.allclose(reference_forward(weights, ids), hidden, atol=1e-5, rtol=1e-5)
        out[f"ids.{k}"] = ids.to(torch.int64)
        out[f"hidden.{k}"] = hidden
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "t5_cases.safetensors"))
    with open(os.path.join(OUT, "t5_prompts.json"), "w") as f:
        json.dump(PROMPTS, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # transformers' bucketing at SD3's real sizes (32 buckets, distance 128) for every
    # relative position up to ±300 (SD3 encodes 256 tokens).
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-300, 301)
    buckets = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    with open(os.path.join(OUT, "t5_buckets.json"), "w") as f:
        json.dump({"relative": rel.tolist(), "bucket": buckets.tolist()}, f)

    print("vocab", tok.get_vocab_size())
    for name, t in weights.items():
        print(f"  {name} {list(t.shape)} {t.dtype}")
    for k, prompt in enumerate(PROMPTS):
        print(k, repr(prompt), out[f"ids.{k}"][0].tolist(), tok.encode(prompt).tokens[:8])


if __name__ == "__main__":
    main()
