"""Completes tests/fixtures/tiny-flux-dev and tests/fixtures/tiny-flux-schnell as diffusers FluxPipeline
folders and records generations with them (packed 2x2 latents, resolution-dependent flow-matching
shift, embedded guidance, true CFG, the static-shift schnell variant).

Needs (from the other make_*.py scripts): tiny-flux-{dev,schnell}/transformer
(make_flux_transformer.py: FluxTransformer2DModel, patch 1, in_channels 64, 2 double + 2 single
blocks, 2 heads x 8, joint_attention_dim 24, pooled_projection_dim 8, axes_dims_rope (2, 2, 4);
guidance_embeds True for dev, False for schnell), tiny-sd35/vae (make_sd3_vae.py),
tiny-sd35/text_encoder_3 (make_sd3_pipeline.py), tiny-sdxl/tokenizer (make_tokenizers.py, the CLIP
BPE vocab: 1000 ids, <|startoftext|> 998, <|endoftext|> 999, pads with 999) and
tiny-t5/tokenizer.json (make_t5.py, Unigram, 200 ids, <pad> 0, </s> 1, <unk> 2).
transformer/ is only read, never rewritten.

Writes into tests/fixtures/tiny-flux-dev/ and tests/fixtures/tiny-flux-schnell/ (identical except
transformer/, scheduler/ and model_index.json):
  text_encoder/    CLIPTextModel (no projection), hidden 8 (= pooled_projection_dim), MLP 16,
                   2 layers, 2 heads, quick_gelu; vocab 1000, bos 998, eos 999 (pooled token =
                   the first 999, as transformers does when eos_token_id != 2), pad 1. Random
                   weights: seed 11, 0.2 randn, layer norms 1 + 0.1 randn, float32 safetensors.
                   (Real FLUX.1 ships openai's config with eos_token_id 2, i.e. the legacy
                   argmax(ids) rule; with eos = the largest id both rules pick the same token.)
  text_encoder_2/  T5EncoderModel, d_model 24 (= joint_attention_dim), d_kv 6, 4 heads, d_ff 48,
                   2 layers, gated-gelu, 32 buckets / distance 128, vocab 200: a byte copy of
                   tiny-sd35/text_encoder_3 (its config is checked to be exactly that)
  tokenizer/       byte copy of tiny-sdxl/tokenizer
  tokenizer_2/     tiny-t5/tokenizer.json (byte copy) + tokenizer_config.json (T5Tokenizer,
                   extra_ids 0); byte-identical to tiny-sd35/tokenizer_3
  vae/             byte copy of tiny-sd35/vae (16 latent channels, 3 blocks -> vae_scale_factor 4,
                   scaling_factor 1.5305, shift_factor 0.0609)
  scheduler/       FlowMatchEulerDiscreteScheduler as FLUX.1-dev's scheduler_config.json
                   (base_image_seq_len 256, base_shift 0.5, max_image_seq_len 4096, max_shift
                   1.15, num_train_timesteps 1000, shift 3.0, use_dynamic_shifting true); for
                   schnell FLUX.1-schnell's (the same but shift 1.0, use_dynamic_shifting false)
  model_index.json as FluxPipeline.save_pretrained writes it

and tests/fixtures/flux_pipeline.safetensors (+ flux_pipeline.json, the settings), from
FluxPipeline.from_pretrained(folder), output_type="latent" (the packed [1, 12, 64] result is
unpacked with FluxPipeline._unpack_latents before saving), max_sequence_length 16, height 32 x
width 24 (latents [1, 16, 8, 6], packed [1, 12, 64]) unless said otherwise. Every init_latents is
drawn UNPACKED (torch.randn([1, 16, h, w], generator=manual_seed(latent_seed))), packed with
FluxPipeline._pack_latents and passed as latents=; every *latents tensor is saved unpacked.
  dev.*       tiny-flux-dev, "a photo of a cat, digits 42!" (19 T5 tokens: truncated to 16,
              </s> kept last), guidance_scale 3.5 (embedded), 4 steps: init_latents,
              final_latents, prompt_embeds [1, 16, 24], pooled_prompt_embeds [1, 8], input_ids
              [1, 77] (CLIP) and input_ids_2 [1, 16] (T5), int64, sigmas [5] (incl. the appended
              0), timesteps [4], mu [1], image = vae.decode(final / scaling_factor +
              shift_factor).sample (raw, not post-processed) [1, 3, 32, 24], img_ids [12, 3],
              text_ids [16, 3]
  dev_cfg.*   the dev prompt with negative_prompt "blurry", true_cfg_scale 4, guidance 3.5,
              3 steps, other latents: init_latents, final_latents, negative_prompt_embeds,
              negative_pooled_prompt_embeds, sigmas, timesteps
  dev_long.*  a prompt of 57 T5 tokens, guidance 3.5, 2 steps, height 48 x width 32 (latents
              [1, 16, 12, 8], 24 image tokens, so mu differs): init_latents, final_latents,
              prompt_embeds, input_ids_2, sigmas, timesteps, mu
  schnell.*   tiny-flux-schnell, the dev prompt, guidance_scale 0.0 (ignored: no guidance
              embedder), 2 steps: init_latents, final_latents, prompt_embeds,
              pooled_prompt_embeds, sigmas, timesteps
  text.*      the two prompts TEXT_PROMPTS through the encoders directly: input_ids [2, 77]
              (tokenizer/, max_length padding), last_hidden_state [2, 77, 8], hidden_states
              [2, 77, 8] (= hidden_states[-2], the penultimate layer, not final-layer-normed),
              pooler_output [2, 8] of text_encoder/
  t5.*        input_ids [2, 16] (tokenizer_2/, max_length 16 padding + truncation),
              last_hidden_state [2, 16, 24] of text_encoder_2/ (no attention mask)

What diffusers 0.42.1's pipelines/flux/pipeline_flux.py does (checked here by assertions):
  * Text: pooled_prompt_embeds = CLIPTextModel(tokenizer(prompt, max_length 77 padding,
    truncation)).pooler_output ([B, 8]; no hidden states used); prompt_embeds =
    T5EncoderModel(tokenizer_2(prompt_2 or prompt, padding="max_length",
    max_length=max_sequence_length, truncation=True)).last_hidden_state ([B, 16, 24]), no
    attention mask. text_ids = torch.zeros(prompt_embeds.shape[1], 3) (2-D, float32). (Its T5
    truncation warning slices untruncated_ids[:, tokenizer_max_length - 1 : -1] with CLIP's 77,
    not max_sequence_length, so it reports the removed text as [''] here: recorded in the json.)
  * Latent size: h = 2 * (height // (vae_scale_factor * 2)), w = 2 * (width // (vae_scale_factor
    * 2)) (vae_scale_factor = 2 ** (len(block_out_channels) - 1) = 4); the transformer's
    in_channels // 4 = 16 channels. _pack_latents: view [B, C, h/2, 2, w/2, 2] -> permute
    (0, 2, 4, 1, 3, 5) -> reshape [B, (h/2)(w/2), 4C] (channel index c*4 + dy*2 + dx);
    _unpack_latents is the inverse. Latents passed in are used as given (no noise scaling).
  * img_ids: [(h/2)(w/2), 3] float32, row r*(w/2) + c = (0, r, c) (_prepare_latent_image_ids).
  * Schedule: sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) (float64),
    image_seq_len = latents.shape[1] (the PACKED token count: 12 for 32x24, 24 for 48x32),
    mu = calculate_shift(image_seq_len, config.base_image_seq_len (256),
    config.max_image_seq_len (4096), config.base_shift (0.5), config.max_shift (1.15)) with
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len), b = base_shift - m * base_seq_len,
    mu = image_seq_len * m + b (Python float64), then retrieve_timesteps(scheduler,
    num_inference_steps, device, sigmas=sigmas, mu=mu) -> scheduler.set_timesteps(sigmas=sigmas,
    mu=mu). set_timesteps: s = np.array(sigmas).astype(np.float32); with use_dynamic_shifting,
    s = time_shift(mu, 1.0, s) = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0) (exponential
    type), evaluated by NumPy >= 2 in FLOAT32 (the Python float exp(mu) is rounded to float32
    first; evaluating it in float64 and rounding afterwards differs by 1 ulp in most of the sigmas
    recorded here, so a port must compute e = f32(exp(mu as f64)), e / (e + (1 / s - 1)) in f32);
    otherwise the static shift s = shift * s / (1 + (shift - 1) * s) is applied, which
    for schnell (shift 1.0) is the identity: schnell's sigmas are the plain linspace (mu is
    still computed and passed, and ignored). sigmas = cat([s, 0]) (float32), timesteps =
    s * 1000 (float32, no appended entry).
  * Guidance: guidance = torch.full([1], guidance_scale, dtype=float32).expand(B) if
    transformer.config.guidance_embeds else None (schnell: None, guidance_scale unused).
  * Loop: for t in timesteps: timestep = t.expand(B).to(latents.dtype);
    v = transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
    pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds,
    txt_ids=text_ids, img_ids=latent_image_ids)[0] (the transformer multiplies timestep and
    guidance by 1000 again internally); scheduler.step: x = x + (sigmas[i + 1] - sigmas[i]) * v
    in float32. (Here t / 1000 == sigmas[i] bit for bit in every case.)
  * True CFG (do_true_cfg = true_cfg_scale > 1 and a negative prompt is given): the negative
    prompt is encoded exactly like the prompt (negative_prompt_2 defaults to negative_prompt;
    negative_text_ids are zeros too). Per step the transformer runs twice, batch 1 each, the
    conditional pass FIRST, then the negative pass with the same latents, timestep, guidance and
    img_ids; v = neg + true_cfg_scale * (cond - neg). Embedded guidance is applied in both
    passes. guidance_scale alone never triggers CFG.
Every final latent is re-derived by a hand-written loop over the packed latents from hand-computed
sigmas (bit-equal to the scheduler's) and the recorded embeds. Output is byte-reproducible.

Run from the repo root, after make_flux_transformer.py, make_sd3_vae.py, make_sd3_pipeline.py:
  OMP_NUM_THREADS=1 python3 tools/golden/make_flux_pipeline.py
"""
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux import pipeline_flux
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
FOLDERS = {"dev": os.path.join(OUT, "tiny-flux-dev"), "schnell": os.path.join(OUT, "tiny-flux-schnell")}
SDXL = os.path.join(OUT, "tiny-sdxl")
SD35 = os.path.join(OUT, "tiny-sd35")
T5_TOKENIZER = os.path.join(OUT, "tiny-t5", "tokenizer.json")

MAX_SEQ = 16
PROMPT = "a photo of a cat, digits 42!"
LONG_PROMPT = "a very long prompt about a red bicycle leaning on a brick wall under the evening sun in the old town"
TEXT_PROMPTS = [LONG_PROMPT, "blurry"]
CASES = {
    "dev": dict(folder="dev", prompt=PROMPT, guidance=3.5, steps=4, latent_seed=1, height=32, width=24),
    "dev_cfg": dict(folder="dev", prompt=PROMPT, guidance=3.5, steps=3, latent_seed=2, height=32, width=24,
                    negative_prompt="blurry", true_cfg_scale=4.0),
    "dev_long": dict(folder="dev", prompt=LONG_PROMPT, guidance=3.5, steps=2, latent_seed=3, height=48, width=32),
    "schnell": dict(folder="schnell", prompt=PROMPT, guidance=0.0, steps=2, latent_seed=4, height=32, width=24),
}
SAVED = {
    "dev": ["init_latents", "final_latents", "prompt_embeds", "pooled_prompt_embeds", "input_ids", "input_ids_2",
            "sigmas", "timesteps", "mu", "image", "img_ids", "text_ids"],
    "dev_cfg": ["init_latents", "final_latents", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
                "sigmas", "timesteps"],
    "dev_long": ["init_latents", "final_latents", "prompt_embeds", "input_ids_2", "sigmas", "timesteps", "mu"],
    "schnell": ["init_latents", "final_latents", "prompt_embeds", "pooled_prompt_embeds", "sigmas", "timesteps"],
}
# FLUX.1-dev / FLUX.1-schnell scheduler/scheduler_config.json (the values they set).
SCHEDULERS = {
    "dev": dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True),
    "schnell": dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
}
T5_EXPECTED = dict(vocab_size=200, d_model=24, d_kv=6, num_heads=4, d_ff=48, num_layers=2,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1)
COMPONENTS = ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler"]


def randomize(model, std):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))


def copy_dir(src, dst):
    os.makedirs(dst, exist_ok=True)
    for file in sorted(os.listdir(src)):
        shutil.copyfile(os.path.join(src, file), os.path.join(dst, file))


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def write_components():
    torch.manual_seed(11)
    with open(os.path.join(SDXL, "text_encoder_2", "config.json")) as f:
        ref = json.load(f)  # the ids of the CLIP BPE vocab with eos 999
    ids = {k: ref[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    assert ids == dict(vocab_size=1000, bos_token_id=998, eos_token_id=999, pad_token_id=1), ids
    clip = CLIPTextModel(CLIPTextConfig(**ids, hidden_size=8, intermediate_size=16, projection_dim=8,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        layer_norm_eps=1e-5, hidden_act="quick_gelu")).eval()
    randomize(clip, 0.2)

    t5_config = T5Config.from_pretrained(os.path.join(SD35, "text_encoder_3"))
    for k, v in T5_EXPECTED.items():
        assert getattr(t5_config, k) == v, (k, getattr(t5_config, k), v)
    assert t5_config.is_gated_act and t5_config.dense_act_fn == "gelu_new"
    assert Tokenizer.from_file(T5_TOKENIZER).get_vocab_size() == 200

    for variant, root in FOLDERS.items():
        for name in COMPONENTS:
            if os.path.isdir(os.path.join(root, name)):
                shutil.rmtree(os.path.join(root, name))
        clip.save_pretrained(os.path.join(root, "text_encoder"), safe_serialization=True)
        copy_dir(os.path.join(SD35, "text_encoder_3"), os.path.join(root, "text_encoder_2"))
        copy_dir(os.path.join(SDXL, "tokenizer"), os.path.join(root, "tokenizer"))
        tok2 = os.path.join(root, "tokenizer_2")
        os.makedirs(tok2)
        shutil.copyfile(T5_TOKENIZER, os.path.join(tok2, "tokenizer.json"))
        with open(os.path.join(tok2, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0,
                       "additional_special_tokens": [], "eos_token": "</s>", "unk_token": "<unk>",
                       "pad_token": "<pad>"}, f, indent=1)
            f.write("\n")
        for file in ("tokenizer.json", "tokenizer_config.json"):
            assert same_bytes(os.path.join(tok2, file), os.path.join(SD35, "tokenizer_3", file)), file
        copy_dir(os.path.join(SD35, "vae"), os.path.join(root, "vae"))
        scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant])
        scheduler.save_pretrained(os.path.join(root, "scheduler"))

        # model_index.json as diffusers writes it; everything else from that save is thrown away.
        transformer = FluxTransformer2DModel.from_pretrained(os.path.join(root, "transformer"))
        assert transformer.config.guidance_embeds == (variant == "dev")
        pipe = FluxPipeline(
            transformer=transformer, vae=AutoencoderKL.from_pretrained(os.path.join(root, "vae")),
            scheduler=scheduler, text_encoder=CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder")),
            text_encoder_2=T5EncoderModel.from_pretrained(os.path.join(root, "text_encoder_2")),
            tokenizer=CLIPTokenizer.from_pretrained(os.path.join(root, "tokenizer")),
            tokenizer_2=T5TokenizerFast.from_pretrained(tok2))
        with tempfile.TemporaryDirectory() as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            shutil.copyfile(os.path.join(tmp, "model_index.json"), os.path.join(root, "model_index.json"))


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def record_set_timesteps(scheduler, log):
    """Wraps scheduler.set_timesteps to record what the pipeline passes (functools.wraps keeps the
    signature visible to retrieve_timesteps' inspect check)."""
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        log.append((args, dict(kwargs)))
        return original(*args, **kwargs)

    scheduler.set_timesteps = wrapper


def hand_sigmas(config, steps, mu):
    """The schedule written out, in the dtypes set_timesteps uses (NumPy 2: float32 throughout)."""
    s = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
    if config["use_dynamic_shifting"]:
        e = np.float32(math.exp(mu))
        s = e / (e + (np.float32(1) / s - np.float32(1)))
    else:
        shift = np.float32(config["shift"])
        s = shift * s / (np.float32(1) + (shift - np.float32(1)) * s)
    assert s.dtype == np.float32
    sigmas = torch.cat([torch.from_numpy(s), torch.zeros(1)])
    return sigmas, sigmas[:-1] * 1000


def img_ids_by_hand(h, w):
    ids = torch.zeros(h // 2, w // 2, 3)
    for r in range(h // 2):
        for c in range(w // 2):
            ids[r, c, 1], ids[r, c, 2] = r, c
    return ids.reshape(-1, 3)


def hand_loop(transformer, latents, sigmas, timesteps, guidance, pe, ppe, text_ids, img_ids, cfg_scale=None,
              npe=None, nppe=None):
    """The sampler written out on packed latents: Euler on the shifted sigmas, timestep t / 1000,
    embedded guidance full([1], g) (None without guidance_embeds), true CFG cond pass first."""
    g = torch.full([1], guidance, dtype=torch.float32) if transformer.config.guidance_embeds else None
    x = latents.clone()
    for i, t in enumerate(timesteps):
        ts = t.reshape(1) / 1000
        v = transformer(hidden_states=x, timestep=ts, guidance=g, pooled_projections=ppe, encoder_hidden_states=pe,
                        txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
        if cfg_scale is not None:
            neg = transformer(hidden_states=x, timestep=ts, guidance=g, pooled_projections=nppe,
                              encoder_hidden_states=npe, txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
            v = neg + cfg_scale * (v - neg)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def main():
    torch.set_num_threads(1)
    write_components()

    handler = Warnings()
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    pipes = {k: FluxPipeline.from_pretrained(root, torch_dtype=torch.float32) for k, root in FOLDERS.items()}
    for variant, pipe in pipes.items():
        assert type(pipe.text_encoder) is CLIPTextModel and pipe.vae_scale_factor == 4
        assert isinstance(pipe.tokenizer_2, T5TokenizerFast) and len(pipe.tokenizer_2) == 200
        assert pipe.transformer.config.in_channels == 64 and pipe.transformer.config.joint_attention_dim == 24
        assert pipe.transformer.config.pooled_projection_dim == 8
        assert pipe.transformer.config.guidance_embeds == (variant == "dev")
    raw_t5 = Tokenizer.from_file(T5_TOKENIZER)

    out, settings, report = {}, {}, {}
    for name, case in CASES.items():
        pipe = pipes[case["folder"]]
        prompt, guidance, steps, height, width = (case[k] for k in ("prompt", "guidance", "steps", "height",
                                                                     "width"))
        neg_prompt, cfg_scale = case.get("negative_prompt"), case.get("true_cfg_scale", 1.0)
        h = 2 * (height // (pipe.vae_scale_factor * 2))
        w = 2 * (width // (pipe.vae_scale_factor * 2))
        generator = torch.Generator().manual_seed(case["latent_seed"])
        init = torch.randn(1, 16, h, w, generator=generator)
        packed = FluxPipeline._pack_latents(init, 1, 16, h, w)
        assert packed.shape == (1, (h // 2) * (w // 2), 64)
        assert torch.equal(FluxPipeline._unpack_latents(packed, height, width, pipe.vae_scale_factor), init)

        calls, tcalls = [], []
        record_set_timesteps(pipe.scheduler, calls)
        hook = pipe.transformer.register_forward_pre_hook(
            lambda mod, args, kwargs: tcalls.append({k: kwargs[k] for k in ("timestep", "guidance",
                                                                           "encoder_hidden_states")}),
            with_kwargs=True)
        handler.messages.clear()
        with torch.no_grad():
            final_packed = pipe(prompt=prompt, negative_prompt=neg_prompt, true_cfg_scale=cfg_scale,
                                num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                                latents=packed.clone(), max_sequence_length=MAX_SEQ, output_type="latent").images
        hook.remove()
        del pipe.scheduler.set_timesteps
        warnings = list(handler.messages)
        final = FluxPipeline._unpack_latents(final_packed, height, width, pipe.vae_scale_factor)
        sigmas, timesteps = pipe.scheduler.sigmas.clone(), pipe.scheduler.timesteps.clone()

        # mu and the schedule: what the pipeline passed, recomputed with diffusers' calculate_shift and by hand
        (args, kwargs), = calls
        assert args == () and set(kwargs) == {"sigmas", "device", "mu"}, (args, kwargs)
        cfgd = pipe.scheduler.config
        mu = pipeline_flux.calculate_shift(packed.shape[1], cfgd.get("base_image_seq_len", 256),
                                           cfgd.get("max_image_seq_len", 4096), cfgd.get("base_shift", 0.5),
                                           cfgd.get("max_shift", 1.15))
        m = (cfgd.max_shift - cfgd.base_shift) / (cfgd.max_image_seq_len - cfgd.base_image_seq_len)
        assert kwargs["mu"] == mu == packed.shape[1] * m + (cfgd.base_shift - m * cfgd.base_image_seq_len)
        assert np.array_equal(kwargs["sigmas"], np.linspace(1.0, 1 / steps, steps))
        want_sigmas, want_timesteps = hand_sigmas(SCHEDULERS[case["folder"]], steps, mu)
        assert torch.equal(sigmas, want_sigmas) and torch.equal(timesteps, want_timesteps), (sigmas, want_sigmas)
        assert sigmas.dtype == timesteps.dtype == torch.float32

        # what the transformer was given
        cfg = neg_prompt is not None and cfg_scale > 1
        assert len(tcalls) == steps * (2 if cfg else 1)
        for i, call in enumerate(tcalls):
            t = timesteps[i // 2 if cfg else i]
            assert torch.equal(call["timestep"], t.reshape(1) / 1000)
            if pipe.transformer.config.guidance_embeds:
                assert torch.equal(call["guidance"], torch.full([1], guidance))
            else:
                assert call["guidance"] is None

        with torch.no_grad():
            pe, ppe, text_ids = pipe.encode_prompt(prompt, prompt, max_sequence_length=MAX_SEQ)
            npe = nppe = None
            if cfg:
                npe, nppe, neg_text_ids = pipe.encode_prompt(neg_prompt, neg_prompt, max_sequence_length=MAX_SEQ)
                assert torch.equal(neg_text_ids, text_ids)
                for i in range(steps):  # cond pass first, then the negative one
                    assert torch.equal(tcalls[2 * i]["encoder_hidden_states"], pe)
                    assert torch.equal(tcalls[2 * i + 1]["encoder_hidden_states"], npe)
            img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
            assert torch.equal(img_ids, img_ids_by_hand(h, w)) and img_ids.shape == ((h // 2) * (w // 2), 3)
            assert torch.equal(text_ids, torch.zeros(MAX_SEQ, 3))
            again = hand_loop(pipe.transformer, packed, want_sigmas, want_timesteps, guidance, pe, ppe, text_ids,
                              img_ids, cfg_scale if cfg else None, npe, nppe)
        err = (again - final_packed).abs().max().item()
        assert err < 1e-6, (name, err)
        assert pe.shape == (1, MAX_SEQ, 24) and ppe.shape == (1, 8)

        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        ids2 = pipe.tokenizer_2(prompt, padding="max_length", max_length=MAX_SEQ, truncation=True,
                                add_special_tokens=True, return_tensors="pt").input_ids
        raw = raw_t5.encode(prompt).ids
        want = raw[:MAX_SEQ - 1] + [1] if len(raw) > MAX_SEQ else raw + [0] * (MAX_SEQ - len(raw))
        assert ids2[0].tolist() == want, (ids2, want)
        with torch.no_grad():
            assert torch.equal(pipe.text_encoder(ids).pooler_output, ppe)
            assert torch.equal(pipe.text_encoder_2(ids2).last_hidden_state, pe)
            eos = ids[0].tolist().index(999)
            assert torch.equal(pipe.text_encoder(ids).last_hidden_state[:, eos], ppe)

        rec = {"init_latents": init, "final_latents": final, "prompt_embeds": pe, "pooled_prompt_embeds": ppe,
               "input_ids": ids, "input_ids_2": ids2, "sigmas": sigmas, "timesteps": timesteps,
               "mu": torch.tensor([mu], dtype=torch.float32), "img_ids": img_ids, "text_ids": text_ids}
        if cfg:
            rec.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe)
        if name == "dev":
            vae = pipe.vae.config
            with torch.no_grad():
                rec["image"] = pipe.vae.decode(final / vae.scaling_factor + vae.shift_factor).sample
            assert rec["image"].shape == (1, 3, height, width)
        out.update({f"{name}.{k}": (rec[k] if rec[k].dtype == torch.int64 else rec[k].float()).contiguous()
                    for k in SAVED[name]})
        settings[name] = {"folder": os.path.basename(FOLDERS[case["folder"]]), "prompt": prompt,
                          "negative_prompt": neg_prompt, "true_cfg_scale": cfg_scale, "guidance_scale": guidance,
                          "guidance_embeds": pipe.transformer.config.guidance_embeds,
                          "num_inference_steps": steps, "height": height, "width": width,
                          "latent_shape": list(init.shape), "packed_shape": list(packed.shape),
                          "image_seq_len": packed.shape[1], "mu": mu, "max_sequence_length": MAX_SEQ,
                          "latent_seed": case["latent_seed"], "t5_tokens_untruncated": len(raw),
                          "output_type": "latent", "warnings": warnings}
        report[name] = (final.abs().max().item(), err, warnings)

    # the encoders on their own
    pipe = pipes["dev"]
    with torch.no_grad():
        ids = pipe.tokenizer(TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        o = pipe.text_encoder(ids, output_hidden_states=True)
        out.update({"text.input_ids": ids, "text.last_hidden_state": o.last_hidden_state,
                    "text.hidden_states": o.hidden_states[-2], "text.pooler_output": o.pooler_output})
        assert len(o.hidden_states) == 3
        ids2 = pipe.tokenizer_2(TEXT_PROMPTS, padding="max_length", max_length=MAX_SEQ, truncation=True,
                                return_tensors="pt").input_ids
        out.update({"t5.input_ids": ids2, "t5.last_hidden_state": pipe.text_encoder_2(ids2).last_hidden_state})
        assert torch.equal(pipe._get_clip_prompt_embeds(TEXT_PROMPTS), o.pooler_output)
        assert torch.equal(pipe._get_t5_prompt_embeds(TEXT_PROMPTS, max_sequence_length=MAX_SEQ),
                           out["t5.last_hidden_state"])
    out = {k: v.contiguous() for k, v in out.items()}

    vae = pipe.vae.config
    settings["text"] = {"prompts": TEXT_PROMPTS, "max_length": 77,
                        "hidden_states": "hidden_states[-2] (penultimate layer output, before final_layer_norm)"}
    settings["t5"] = {"prompts": TEXT_PROMPTS, "max_length": MAX_SEQ}
    settings["pipeline"] = {
        "folders": {k: os.path.basename(v) for k, v in FOLDERS.items()}, "vae_scale_factor": pipe.vae_scale_factor,
        "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor,
        "schedulers": {k: dict(p.scheduler.config) for k, p in pipes.items()},
        "latents": "*.init_latents / *.final_latents are UNPACKED [1, 16, h, w]; the pipeline ran on "
                   "FluxPipeline._pack_latents(init_latents) and its packed output was _unpack_latents'd",
        "image": "dev.image = vae.decode(dev.final_latents / scaling_factor + shift_factor).sample",
        "mu": "calculate_shift(packed token count, 256, 4096, 0.5, 1.15), float64; saved as float32",
        "true_cfg": "v = neg + true_cfg_scale * (cond - neg); cond pass first; guidance embedded in both",
    }
    save_file(out, os.path.join(OUT, "flux_pipeline.safetensors"))
    with open(os.path.join(OUT, "flux_pipeline.json"), "w") as f:
        json.dump(settings, f, indent=1)
        f.write("\n")

    for k, v in out.items():
        print(f"  {k} {list(v.shape)} {str(v.dtype)[6:]} max|.| {v.abs().float().max().item():.4g}")
    for name in CASES:
        m, err, warnings = report[name]
        print(f"{name}: max|final| {m:.4f}, hand loop err {err:.2e}, mu {settings[name]['mu']!r}, "
              f"t5 tokens {settings[name]['t5_tokens_untruncated']}, warnings {warnings}")
        print(f"  sigmas {out[name + '.sigmas'].tolist()} timesteps {out[name + '.timesteps'].tolist()}")
    for key in ("dev.input_ids", "dev.input_ids_2", "dev_long.input_ids_2", "t5.input_ids"):
        print(key, out[key].tolist())
    for root in FOLDERS.values():
        total = 0
        for dirpath, _, files in os.walk(root):
            for file in sorted(files):
                size = os.path.getsize(os.path.join(dirpath, file))
                total += size
                print(f"  {os.path.join(dirpath, file)} {size}")
        print(f"{root}: {total} bytes")
        assert total < 1.5e6, (root, total)


if __name__ == "__main__":
    main()
