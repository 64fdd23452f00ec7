"""Completes tests/fixtures/tiny-sd35 as a diffusers StableDiffusion3Pipeline folder and records
generations with it (flow matching, three text encoders, CFG, the T5-less variant).

Needs (from the other make_*.py scripts): tiny-sd35/transformer (make_sd3_transformer.py),
tiny-sd35/vae (make_sd3_vae.py), tiny-sdxl/tokenizer{,_2} (make_tokenizers.py, the CLIP BPE
vocab: 1000 ids, <|startoftext|> 998, <|endoftext|> 999) and tiny-t5/tokenizer.json (make_t5.py,
Unigram, 200 ids, <pad> 0, </s> 1, <unk> 2). transformer/ and vae/ are read, never rewritten.

Writes into tests/fixtures/tiny-sd35/:
  text_encoder/    CLIPTextModelWithProjection, hidden 8, projection 8, MLP 16, 2 layers, 2 heads,
                   quick_gelu; vocab 1000, bos 998, eos 2 (legacy: pooled token = argmax(ids)),
                   pad 1 (ids as tiny-sdxl/text_encoder)
  text_encoder_2/  CLIPTextModelWithProjection, hidden 12, projection 12, MLP 24, 2 layers, 2 heads,
                   gelu; vocab 1000, bos 998, eos 999 (pooled token = first 999), pad 1
                   (8 + 12 = 20 = the transformer's pooled_projection_dim; the 8 + 12 CLIP widths
                   are zero-padded by the pipeline to the T5 width 24 = joint_attention_dim)
  text_encoder_3/  T5EncoderModel, d_model 24, d_kv 6, 4 heads, d_ff 48, 2 layers, gated-gelu,
                   32 buckets / distance 128, vocab 200 (= tiny-t5's tokenizer)
  tokenizer/, tokenizer_2/   copies of tiny-sdxl/tokenizer, tokenizer_2 (tokenizer_2 pads with "!" = 0)
  tokenizer_3/     tiny-t5/tokenizer.json (byte copy) + tokenizer_config.json (T5Tokenizer,
                   extra_ids 0: without it transformers appends 100 <extra_id_*> tokens)
  scheduler/       FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
  model_index.json as StableDiffusion3Pipeline.save_pretrained writes it
Encoder weights are random (seed 35; CLIP 0.2 randn as make_text_encoders.py, T5 0.5 randn as
make_t5.py, layer norms 1 + 0.1 randn), float32, saved with safetensors.

and tests/fixtures/sd3_pipeline.safetensors (+ sd3_pipeline.json, the settings), from
StableDiffusion3Pipeline.from_pretrained("tests/fixtures/tiny-sd35"), output_type="latent",
height 32 x width 24 (VAE factor 4, patch 2: latents [1, 16, 8, 6]), max_sequence_length 16:
  cfg.*   "a photo of a cat, digits 42!" (19 T5 tokens: truncated to 16 as well; its "!" is id 256
          "!</w>" for tokenizer/ but the added pad token "!" = 0 for tokenizer_2/), no negative
          prompt ("" is encoded), guidance 5, 4 steps:
          init_latents, final_latents, prompt_embeds [1, 77 + 16, 24], negative_prompt_embeds,
          pooled_prompt_embeds [1, 20], negative_pooled_prompt_embeds, input_ids / input_ids_2
          [1, 77] and input_ids_3 [1, 16] (int64), sigmas [5] and timesteps [4] after
          set_timesteps(4), image = vae.decode(final / scaling_factor + shift_factor).sample
          (raw, not post-processed); negative_input_ids{,_2,_3}: the ids of "" (the negative prompt)
  long.*  a prompt of 57 T5 tokens (truncated, </s> kept last), guidance 1 (no CFG),
          3 steps, other init latents: init_latents, final_latents, prompt_embeds,
          pooled_prompt_embeds, input_ids_3, sigmas, timesteps
  not5.*  the folder loaded with text_encoder_3=None, tokenizer_3=None (T5 rows of the embeds are
          zeros), the cfg prompt / latents / settings: final_latents, prompt_embeds,
          negative_prompt_embeds
Every final latent is also re-derived by a hand-written loop (x += (sigma_next - sigma) * v,
v = uncond + g * (cond - uncond)) from the recorded embeds. Output is byte-reproducible.

Run from the repo root, after the other make_*.py scripts:
  OMP_NUM_THREADS=1 python3 tools/golden/make_sd3_pipeline.py
"""
import json
import logging
import os
import shutil
import sys
import tempfile

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel,
                          T5TokenizerFast)

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
ROOT = os.path.join(OUT, "tiny-sd35")
SDXL = os.path.join(OUT, "tiny-sdxl")
T5_TOKENIZER = os.path.join(OUT, "tiny-t5", "tokenizer.json")

HEIGHT, WIDTH, MAX_SEQ = 32, 24, 16
PROMPT = "a photo of a cat, digits 42!"
LONG_PROMPT = "a very long prompt about a red bicycle leaning on a brick wall under the evening sun in the old town"
CASES = {
    "cfg": dict(prompt=PROMPT, guidance=5.0, steps=4, latent_seed=1),
    "long": dict(prompt=LONG_PROMPT, guidance=1.0, steps=3, latent_seed=2),
    "not5": dict(prompt=PROMPT, guidance=5.0, steps=4, latent_seed=1, text_encoder_3=None),
}


def randomize(model, std):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))


def clip_encoder(sdxl_name, **kw):
    with open(os.path.join(SDXL, sdxl_name, "config.json")) as f:
        ref = json.load(f)
    ids = {k: ref[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    config = CLIPTextConfig(**ids, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            layer_norm_eps=1e-5, **kw)
    model = CLIPTextModelWithProjection(config).eval()
    randomize(model, 0.2)
    return model


def write_components():
    torch.manual_seed(35)
    enc1 = clip_encoder("text_encoder", hidden_size=8, projection_dim=8, intermediate_size=16, hidden_act="quick_gelu")
    enc2 = clip_encoder("text_encoder_2", hidden_size=12, projection_dim=12, intermediate_size=24, hidden_act="gelu")
    t5_vocab = Tokenizer.from_file(T5_TOKENIZER).get_vocab_size()
    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=24, d_kv=6, num_heads=4, d_ff=48, num_layers=2,
                                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                 feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                                 tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    randomize(t5, 0.5)
    for name, model in [("text_encoder", enc1), ("text_encoder_2", enc2), ("text_encoder_3", t5)]:
        model.save_pretrained(os.path.join(ROOT, name), safe_serialization=True)

    for name in ("tokenizer", "tokenizer_2"):
        os.makedirs(os.path.join(ROOT, name), exist_ok=True)
        for file in sorted(os.listdir(os.path.join(SDXL, name))):
            shutil.copyfile(os.path.join(SDXL, name, file), os.path.join(ROOT, name, file))
    tok3 = os.path.join(ROOT, "tokenizer_3")
    os.makedirs(tok3, exist_ok=True)
    shutil.copyfile(T5_TOKENIZER, os.path.join(tok3, "tokenizer.json"))
    with open(os.path.join(tok3, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0,
                   "additional_special_tokens": [], "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": "<pad>"}, f, indent=1)
        f.write("\n")

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.save_pretrained(os.path.join(ROOT, "scheduler"))

    # model_index.json as diffusers writes it; everything else from that save is thrown away.
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel.from_pretrained(os.path.join(ROOT, "transformer")),
        vae=AutoencoderKL.from_pretrained(os.path.join(ROOT, "vae")), scheduler=scheduler,
        text_encoder=enc1, text_encoder_2=enc2, text_encoder_3=t5,
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(ROOT, "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(ROOT, "tokenizer_2")),
        tokenizer_3=T5TokenizerFast.from_pretrained(tok3))
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(os.path.join(tmp, "model_index.json"), os.path.join(ROOT, "model_index.json"))


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def hand_loop(pipe, latents, steps, guidance, pe, ppe, npe=None, nppe=None):
    """The sampler written out: flow-matching Euler on the shifted sigmas, CFG on the velocity."""
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    x = latents.clone()
    cfg = guidance > 1
    for i, t in enumerate(sched.timesteps):
        inp = torch.cat([x, x]) if cfg else x
        v = pipe.transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]),
                             encoder_hidden_states=torch.cat([npe, pe]) if cfg else pe,
                             pooled_projections=torch.cat([nppe, ppe]) if cfg else ppe, return_dict=False)[0]
        if cfg:
            uncond, cond = v.chunk(2)
            v = uncond + guidance * (cond - uncond)
        x = x + (sched.sigmas[i + 1] - sched.sigmas[i]) * v
    return x


def main():
    torch.set_num_threads(1)
    write_components()

    handler = Warnings()
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    full = StableDiffusion3Pipeline.from_pretrained(ROOT, torch_dtype=torch.float32)
    no_t5 = StableDiffusion3Pipeline.from_pretrained(ROOT, torch_dtype=torch.float32, text_encoder_3=None,
                                                     tokenizer_3=None)
    factor = full.vae_scale_factor * full.patch_size
    assert full.vae_scale_factor == 4 and HEIGHT % factor == 0 and WIDTH % factor == 0
    assert isinstance(full.tokenizer_3, T5TokenizerFast) and len(full.tokenizer_3) == 200
    raw_t5 = Tokenizer.from_file(T5_TOKENIZER)

    out, settings, report = {}, {}, {}
    for name, case in CASES.items():
        pipe = no_t5 if "text_encoder_3" in case else full
        prompt, guidance, steps = case["prompt"], case["guidance"], case["steps"]
        generator = torch.Generator().manual_seed(case["latent_seed"])
        latents = torch.randn(1, 16, HEIGHT // 4, WIDTH // 4, generator=generator)
        handler.messages.clear()
        with torch.no_grad():
            final = pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, height=HEIGHT,
                         width=WIDTH, latents=latents.clone(), max_sequence_length=MAX_SEQ,
                         output_type="latent").images
        warnings = list(handler.messages)
        cfg = guidance > 1
        with torch.no_grad():
            pe, npe, ppe, nppe = pipe.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=cfg,
                                                    max_sequence_length=MAX_SEQ)
            again = hand_loop(pipe, latents, steps, guidance, pe, ppe, npe, nppe)
        err = (again - final).abs().max().item()
        assert err < 1e-5, (name, err)
        assert pe.shape == (1, 77 + MAX_SEQ, 24) and ppe.shape == (1, 20)
        assert pe[:, :77, 20:].abs().max() == 0  # CLIP widths 8 + 12 zero-padded to 24
        pipe.scheduler.set_timesteps(steps)
        rec = {"init_latents": latents, "final_latents": final, "prompt_embeds": pe, "pooled_prompt_embeds": ppe,
               "sigmas": pipe.scheduler.sigmas.float(), "timesteps": pipe.scheduler.timesteps.float()}
        if cfg:
            rec.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe)
        if pipe.tokenizer_3 is not None:
            ids3 = pipe.tokenizer_3(prompt, padding="max_length", max_length=MAX_SEQ, truncation=True,
                                    add_special_tokens=True, return_tensors="pt").input_ids
            raw = raw_t5.encode(prompt).ids
            want = raw[:MAX_SEQ - 1] + [1] if len(raw) > MAX_SEQ else raw + [0] * (MAX_SEQ - len(raw))
            assert ids3[0].tolist() == want, (ids3, want)
            rec["input_ids_3"] = ids3
            report[name + ".t5_tokens_untruncated"] = len(raw)
        else:
            assert pe[:, 77:].abs().max() == 0 and npe[:, 77:].abs().max() == 0
        if name == "cfg":
            for key, tok in (("input_ids", pipe.tokenizer), ("input_ids_2", pipe.tokenizer_2)):
                for text, prefix in ((prompt, ""), ("", "negative_")):
                    rec[prefix + key] = tok(text, padding="max_length", max_length=77, truncation=True,
                                            return_tensors="pt").input_ids
            rec["negative_input_ids_3"] = pipe.tokenizer_3("", padding="max_length", max_length=MAX_SEQ,
                                                           truncation=True, return_tensors="pt").input_ids
            assert rec["negative_input_ids_3"][0].tolist() == [1] + [0] * (MAX_SEQ - 1)
            vae = pipe.vae.config
            with torch.no_grad():
                rec["image"] = pipe.vae.decode(final / vae.scaling_factor + vae.shift_factor).sample
        if name == "not5":  # the cfg case's latents, already stored
            rec = {k: rec[k] for k in ("final_latents", "prompt_embeds", "negative_prompt_embeds")}
        out.update({f"{name}.{k}": (v.to(torch.int64) if v.dtype == torch.int64 else v.float()).contiguous()
                    for k, v in rec.items()})
        settings[name] = {"prompt": prompt, "negative_prompt": None, "guidance_scale": guidance,
                          "num_inference_steps": steps, "height": HEIGHT, "width": WIDTH,
                          "max_sequence_length": MAX_SEQ, "latent_seed": case["latent_seed"],
                          "text_encoder_3": pipe.text_encoder_3 is not None, "output_type": "latent",
                          "warnings": warnings}
        report[name] = (final.abs().max().item(), err, warnings)

    vae = full.vae.config
    settings["pipeline"] = {"folder": "tiny-sd35", "vae_scale_factor": full.vae_scale_factor,
                            "patch_size": full.patch_size, "scaling_factor": vae.scaling_factor,
                            "shift_factor": vae.shift_factor, "scheduler_shift": full.scheduler.config.shift,
                            "image": "cfg.image = vae.decode(cfg.final_latents / scaling_factor + shift_factor)"}
    save_file(out, os.path.join(OUT, "sd3_pipeline.safetensors"))
    with open(os.path.join(OUT, "sd3_pipeline.json"), "w") as f:
        json.dump(settings, f, indent=1)
        f.write("\n")

    for k, v in out.items():
        print(f"  {k} {list(v.shape)} {str(v.dtype)[6:]} max|.| {v.abs().max().item():.4g}")
    for name in CASES:
        m, err, warnings = report[name]
        print(f"{name}: max|final| {m:.4f}, hand loop err {err:.2e}, t5 tokens "
              f"{report.get(name + '.t5_tokens_untruncated', '-')}, warnings {warnings}")
    print("sigmas", out["cfg.sigmas"].tolist(), "timesteps", out["cfg.timesteps"].tolist())
    print("long sigmas", out["long.sigmas"].tolist(), "timesteps", out["long.timesteps"].tolist())
    for key in ("cfg.input_ids", "cfg.input_ids_2", "cfg.input_ids_3", "cfg.negative_input_ids",
                "cfg.negative_input_ids_2", "cfg.negative_input_ids_3", "long.input_ids_3"):
        print(key, out[key][0].tolist())


if __name__ == "__main__":
    main()
