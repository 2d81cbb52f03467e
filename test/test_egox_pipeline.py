"""The EgoX pipeline on a tiny, randomly initialised Wan 2.1 I2V checkpoint built from configs (no download).

Canvas and mask layout, the clean exo latent, GGA on the self-attention, the released LoRA naming, seeds, and clear
errors for bad input and missing files.
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from egox_ros.core.attention.directions import gga_tables_from_geometry
from egox_ros.core.attention.gga import GgaTables, flex_attention_available
from egox_ros.core.attention.processor import GgaAttnProcessor, GgaState
from egox_ros.core.egox.pipeline import EgoxPipeline, _video_tensor
from egox_ros.core.egox.tiny import save_tiny_lora, save_tiny_model, tiny_transformer_config
from egox_ros.core.egox.weights import LORA_KEY, WeightsError, check_lora_file
from egox_ros.core.geometry.cameras import PinholeCamera

FRAMES, H, W_EXO, W_EGO = 5, 32, 64, 32          # latent: 2 frames x 4 x (8 + 4); tokens: 2 x 2 x (4 + 2) = 24
PROMPT = "[Exo view] a person picks up a cup [Ego view] the hands pick up a cup"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("egox_weights")
    return save_tiny_model(root / "model"), save_tiny_lora(root / "lora")


@pytest.fixture(scope="module")
def pipe(weights):
    model, lora = weights
    p = EgoxPipeline.from_local(model, lora, dtype=torch.float32, device="cpu")
    p.set_progress_bar_config(disable=True)
    return p


def videos(seed=0):
    rng = np.random.default_rng(seed)
    exo = rng.integers(0, 256, (FRAMES, H, W_EXO, 3), dtype=np.uint8)
    prior = rng.integers(0, 256, (FRAMES, H, W_EGO, 3), dtype=np.uint8)
    prior[:, :, : W_EGO // 2] = 0                   # a hole, as the prior has
    return exo, prior


def geometry_tables(strength_scene: float = 2.0) -> GgaTables:
    """Direction tables of the tiny canvas from a real geometry: exo and ego cameras 0.5 m apart facing a wall."""
    ego_cam = PinholeCamera(W_EGO, H, 20.0, 20.0, 15.5, 15.5)
    exo_cam = PinholeCamera(W_EXO, H, 30.0, 30.0, 31.5, 15.5)
    ego = torch.eye(4, dtype=torch.float64).repeat(FRAMES, 1, 1)
    ego[:, 0, 3] = torch.linspace(0.0, 0.3, FRAMES)
    exo = torch.eye(4, dtype=torch.float64)
    exo[0, 3] = -0.5
    depth = torch.full((FRAMES, H, W_EXO), strength_scene)
    tables, layout = gga_tables_from_geometry(ego_cam, ego, exo_cam, exo, depth)
    assert layout.length == 24
    return tables


def seeded_latents(pipe, exo, prior, seed):
    """What the pipeline draws from its generator, in its order: z_T (ego half), then the exo and the prior latent
    as VAE posterior samples (the released default)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 2, H // 8, W_EGO // 8, generator=g)
    x0 = pipe.encode_video(_video_tensor(exo, "exo"), "sample", g)
    p0 = pipe.encode_video(_video_tensor(prior, "prior"), "sample", g)
    return noise, x0, p0


def run(pipe, seed=0, **kwargs):
    exo, prior = kwargs.pop("videos", videos())
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(exo, prior, PROMPT, "blurry", generator=torch.Generator().manual_seed(seed), **kwargs)


def test_whole_pipeline_runs_on_cpu(pipe):
    out = run(pipe, gga_tables=geometry_tables())
    assert out.ego.shape == (FRAMES, H, W_EGO, 3) and out.ego.dtype == np.uint8
    assert out.exo_latent.shape == (1, 16, 2, H // 8, W_EXO // 8)
    assert out.ego.std() > 1.0                                   # an image, not a constant
    # The prior conditions the ego half: another prior, another clip.
    exo, prior = videos()
    other = run(pipe, videos=(exo, 255 - prior))
    assert np.abs(other.ego.astype(int) - run(pipe).ego).max() > 0


def test_canvas_channels_and_mask_layout(pipe):
    exo, prior = videos()
    inputs = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    try:
        out = run(pipe, videos=(exo, prior), num_inference_steps=2, guidance_scale=5.0)
    finally:
        hook.remove()
    assert len(inputs) == 2 * 2                                  # two passes per step (classifier-free guidance)
    x0, p0 = seeded_latents(pipe, exo, prior, seed=0)[1:]        # posterior samples, drawn after z_T
    assert torch.equal(out.exo_latent, x0)
    we = x0.shape[-1]
    for x in inputs:
        assert x.shape == (1, 36, 2, H // 8, (W_EXO + W_EGO) // 8)
        assert torch.equal(x[:, :16, ..., :we], x0)              # the clean exo latent, every pass
        mask = x[:, 16:20]
        assert (mask[:, :, 0, :, :we] == 1).all()                # exo half, first latent frame: known
        assert (mask[:, :, 1:, :, :we] == 0).all() and (mask[..., we:] == 0).all()
        assert torch.equal(x[:, 20:36, ..., :we], x0)            # condition: x_0 | p_0
        assert torch.allclose(x[:, 20:36, ..., we:], p0, atol=1e-6)
    # The noisy ego half moves from step to step; the exo half does not.
    assert not torch.equal(inputs[0][:, :16, ..., we:], inputs[2][:, :16, ..., we:])


def test_the_exo_half_never_moves_and_only_the_ego_half_is_decoded(pipe, monkeypatch):
    # What the scheduler gets: the exo half of the guided velocity is exactly zero, the ego half is not.
    velocities = []
    step = pipe.scheduler.step
    monkeypatch.setattr(pipe.scheduler, "step", lambda v, *a, **k: (velocities.append(v.clone()), step(v, *a, **k))[1])
    seen = []
    out = run(pipe, num_inference_steps=4, step_callback=lambda i, t, z: seen.append(z.clone()))
    monkeypatch.undo()
    assert len(seen) == len(velocities) == 4
    we = out.exo_latent.shape[-1]
    for v in velocities:
        assert (v[..., :we] == 0).all() and v[..., we:].abs().min() > 0
    for z in seen:
        assert torch.equal(z[..., :we], out.exo_latent)
    latent = run(pipe, num_inference_steps=4, output_type="latent").ego
    assert latent.shape[-1] == W_EGO // 8 and torch.equal(latent, seen[-1][..., we:])


def test_same_seed_same_clip_other_seed_other_clip(pipe):
    a, b, c = run(pipe, seed=7), run(pipe, seed=7), run(pipe, seed=8)
    assert np.array_equal(a.ego, b.ego)
    assert not np.array_equal(a.ego, c.ego)


def test_gga_on_and_off_change_the_ego_output(pipe):
    tables = geometry_tables()
    plain = run(pipe, output_type="latent").ego
    guided = run(pipe, output_type="latent", gga_tables=tables).ego
    assert (guided - plain).abs().max() > 1e-3
    # Zero key directions make every bias log(1 + eps): softmax-invariant, so GGA with them equals no GGA.
    flat = GgaTables(tables.query_dir, tables.query_frame, tables.query_is_ego, torch.zeros_like(tables.key_dir))
    assert torch.allclose(run(pipe, output_type="latent", gga_tables=flat).ego, plain, atol=1e-5)
    # The paper's formula is another bias.
    pipe.enable_gga(mode="paper", strength=1.0)
    try:
        paper = run(pipe, output_type="latent", gga_tables=tables).ego
    finally:
        pipe.enable_gga(mode="released", strength=3.0)
    assert (paper - guided).abs().max() > 1e-4


def test_gga_biases_ego_query_rows_only():
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor
    torch.manual_seed(0)
    model = WanTransformer3DModel(**tiny_transformer_config(1))
    attn = model.blocks[0].attn1
    tables = geometry_tables()
    x = torch.randn(1, tables.length, 32)
    rope = model.rope(torch.zeros(1, 36, 2, H // 8, (W_EXO + W_EGO) // 8))
    with torch.no_grad():
        plain = WanAttnProcessor()(attn, x, None, None, rope)
        guided = GgaAttnProcessor(GgaState(tables=tables))(attn, x, None, None, rope)
        unset = GgaAttnProcessor(GgaState())(attn, x, None, None, rope)
    ego = tables.query_is_ego
    assert torch.allclose(guided[:, ~ego], plain[:, ~ego], atol=1e-6)     # exo rows: exactly plain attention
    assert (guided[:, ego] - plain[:, ego]).abs().max() > 1e-3
    assert torch.allclose(unset, plain, atol=1e-6)                       # no tables: plain attention
    with pytest.raises(ValueError, match="self-attention"):
        GgaAttnProcessor(GgaState())(attn, x, x, None, rope)


def image_embeds_seen(pipe, **kwargs):
    """The CLIP embeddings the transformer gets in a one-step run."""
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: seen.append(kw["encoder_hidden_states_image"].clone()), with_kwargs=True)
    try:
        run(pipe, num_inference_steps=1, output_type="latent", **kwargs)
    finally:
        hook.remove()
    return seen[0]


def test_the_released_clip_image_is_frame_0_of_the_decoded_exo_and_noise_canvas(pipe):
    exo, prior = videos()
    noise, x0, _ = seeded_latents(pipe, exo, prior, seed=5)
    # Independently, as the released code: un-normalise [x_0 | z_T], decode the whole canvas video, keep frame 0.
    cfg = pipe.vae.config
    mean, std = (torch.tensor(v).view(1, 16, 1, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
    with torch.no_grad():
        video = pipe.vae.decode(torch.cat([x0, noise], dim=-1) * std + mean, return_dict=False)[0]
        assert video.shape == (1, 3, FRAMES, H, W_EXO + W_EGO)
        image = ((video[:, :, 0] + 1.0) / 2.0).clamp(0.0, 1.0)
        pixels = pipe.image_processor(images=image, return_tensors="pt", do_rescale=False)
        expected = pipe.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]
        # Decoding the first latent frame only gives the same image (the VAE is causal in time).
        assert torch.allclose(pipe.released_clip_image(torch.cat([x0, noise], dim=-1)), image, atol=1e-5)
    released = image_embeds_seen(pipe, seed=5)                  # the default
    assert torch.allclose(released, expected, atol=1e-5)
    assert torch.equal(image_embeds_seen(pipe, seed=5), released)                  # deterministic given the seed
    assert (image_embeds_seen(pipe, seed=6) - released).abs().max() > 1e-4        # the noise half is in the image
    canvas, exo_only = image_embeds_seen(pipe, seed=5, clip_image="canvas"), image_embeds_seen(pipe, seed=5,
                                                                                              clip_image="exo")
    assert (canvas - released).abs().max() > 1e-4 and (exo_only - canvas).abs().max() > 1e-4
    with pytest.raises(ValueError, match="clip_image must be one of"):
        run(pipe, clip_image="prior")


def test_the_training_clip_image_is_the_frame_divided_by_255_as_the_released_training_saw_it(pipe):
    # wan_dataset.py: frame 0 of [exo | ego] as floats in [0, 1]; sft_trainer.py encode_first_frame: the processor
    # with its default rescale (1/255) on top. Ours: the prior stands in for the real ego frame.
    exo, prior = videos()
    first = torch.cat([_video_tensor(exo, "exo")[0, :, 0], _video_tensor(prior, "prior")[0, :, 0]], dim=-1)
    with torch.no_grad():
        pixels = pipe.image_processor(images=((first + 1.0) / 2.0)[None], return_tensors="pt")
        expected = pipe.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]
    assert pixels["pixel_values"].std(dim=(2, 3)).max() < 0.05                    # nearly a black image
    training = image_embeds_seen(pipe, clip_image="training")
    assert torch.allclose(training, expected, atol=1e-5)
    # Nearly independent of the content: inverted videos move it much less than they move the 'canvas' image.
    inverted = image_embeds_seen(pipe, clip_image="training", videos=(255 - exo, 255 - prior))
    canvas = image_embeds_seen(pipe, clip_image="canvas")
    canvas_inverted = image_embeds_seen(pipe, clip_image="canvas", videos=(255 - exo, 255 - prior))
    assert (inverted - training).abs().max() < 0.1 * (canvas_inverted - canvas).abs().max()


def test_the_exo_latent_is_a_seeded_posterior_sample_or_the_mean(pipe):
    exo, _ = videos()
    steps = dict(num_inference_steps=1, output_type="latent")
    a, b, c = run(pipe, seed=3, **steps), run(pipe, seed=3, **steps), run(pipe, seed=4, **steps)
    mean = run(pipe, seed=3, exo_latent="mean", **steps)
    assert torch.equal(a.exo_latent, b.exo_latent) and torch.equal(a.ego, b.ego)     # reproducible
    assert not torch.equal(a.exo_latent, c.exo_latent)                                 # another seed, another draw
    assert torch.equal(mean.exo_latent, pipe.encode_video(_video_tensor(exo, "exo")))  # 'mean': the posterior mean
    assert (a.exo_latent - mean.exo_latent).abs().max() > 1e-3
    assert not torch.equal(a.ego, mean.ego)
    # The ego prior latent likewise.
    prior_mean = run(pipe, seed=3, prior_latent="mean", **steps)
    assert torch.equal(prior_mean.exo_latent, a.exo_latent) and not torch.equal(prior_mean.ego, a.ego)
    with pytest.raises(ValueError, match="exo_latent must be one of"):
        run(pipe, exo_latent="mode")


def test_posterior_samples_come_from_the_rng_the_released_inference_seeds(pipe):
    # infer.py: torch.manual_seed(seed) (every device) once; the exo encode's latent_dist.sample() is the first draw
    # from that global RNG, the prior encode's the second; z_T comes from its own CPU generator.
    exo, prior = videos()
    conditions = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: conditions.append(kwargs["hidden_states"][:, 20:36].clone()), with_kwargs=True)
    try:
        generator, posterior = pipe.seeded_generators(11)
        out = pipe(exo, prior, PROMPT, "blurry", generator=generator, posterior_generator=posterior,
                   num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        hook.remove()
    cfg = pipe.vae.config
    mean, std = (torch.tensor(v).view(1, 16, 1, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(11)
        x0 = (pipe.vae.encode(_video_tensor(exo, "exo")).latent_dist.sample() - mean) * (1.0 / std)
        p0 = (pipe.vae.encode(_video_tensor(prior, "prior")).latent_dist.sample() - mean) * (1.0 / std)
    assert torch.allclose(out.exo_latent, x0, atol=1e-5)
    assert torch.allclose(conditions[0][..., x0.shape[-1]:], p0, atol=1e-5)
    # Without a posterior generator the samples are drawn after z_T from the CPU generator: other draws.
    after = pipe(exo, prior, PROMPT, "blurry", generator=torch.Generator().manual_seed(11), num_inference_steps=1,
                 guidance_scale=1.0, output_type="latent")
    assert (after.exo_latent - x0).abs().max() > 1e-3


def test_output_frames_are_truncated_to_uint8_as_the_released_code_writes_them(pipe):
    latent = run(pipe, seed=2, output_type="latent").ego
    with torch.no_grad():
        video = pipe.decode_latents(latent)
    # Released: the video processor's float frames (x / 2 + 0.5 clamped to [0, 1]), then
    # np.clip(frames * 255, 0, 255).astype(np.uint8).
    frames = (video[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).float().numpy()
    expected = np.clip(frames * 255, 0, 255).astype(np.uint8)
    truncated = run(pipe, seed=2).ego
    assert np.array_equal(truncated, expected)
    rounded = run(pipe, seed=2, output_uint8="round").ego
    assert np.array_equal(rounded, np.round(frames * 255).astype(np.uint8))
    assert (rounded.astype(int) - truncated).max() == 1 and (rounded != truncated).mean() > 0.2
    with pytest.raises(ValueError, match="output_uint8 must be one of"):
        run(pipe, output_uint8="floor")


def test_the_negative_prompt_defaults_to_the_empty_prompt(pipe):
    from egox_ros.core.config import DEFAULT_NEGATIVE_PROMPT, EgoxConfig
    assert DEFAULT_NEGATIVE_PROMPT == "" and EgoxConfig().negative_prompt == ""
    exo, prior = videos()
    kwargs = dict(num_inference_steps=2, output_type="latent")
    none = pipe(exo, prior, PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).ego
    empty = pipe(exo, prior, PROMPT, "", generator=torch.Generator().manual_seed(0), **kwargs).ego
    assert torch.equal(none, empty)                                # None (the released call) is the empty prompt
    assert not torch.equal(run(pipe, **kwargs).ego, empty)         # run() passes "blurry": it still counts


def test_prompt_embeddings_give_the_same_clip_as_the_prompt(pipe):
    positive, negative = pipe.encode_prompt(PROMPT, "blurry", max_sequence_length=512, device="cpu")
    exo, prior = videos()
    from_text = run(pipe, output_type="latent").ego
    from_embeds = pipe(exo, prior, prompt_embeds=positive, negative_prompt_embeds=negative, num_inference_steps=3,
                       generator=torch.Generator().manual_seed(0), output_type="latent").ego
    assert torch.allclose(from_text, from_embeds, atol=1e-5)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        pipe(exo, prior, prompt_embeds=positive, num_inference_steps=1)
    with pytest.raises(ValueError, match="prompt"):
        pipe(exo, prior, num_inference_steps=1)


def test_a_rank_256_lora_with_the_released_names_loads_and_fuses_exactly(weights, pipe, tmp_path):
    model, lora = weights
    with safe_open(str(lora), framework="pt") as f:
        keys = list(f.keys())
        assert f.get_slice("transformer.blocks.0.attn1.to_q.lora_A.weight").get_shape() == [256, 32]
    assert len(keys) == 2 * 2 * 4 * 2 and all(LORA_KEY.match(k) for k in keys)
    summary = check_lora_file(lora, pipe.transformer.config)
    assert (summary.rank, summary.blocks, summary.keys) == (256, 2, 32)

    base = EgoxPipeline.from_local(model, None, dtype=torch.float32, device="cpu")
    unfused = EgoxPipeline.from_local(model, None, dtype=torch.float32, device="cpu")
    unfused.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="egox")   # adapter layers, unfused
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, 36, 2, 4, 12, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 512, 32, generator=g),
                  encoder_hidden_states_image=torch.randn(1, 17, 32, generator=g), return_dict=False)
    with torch.no_grad():
        y_fused = pipe.transformer(**inputs)[0]
        y_unfused = unfused.transformer(**inputs)[0]
        y_base = base.transformer(**inputs)[0]
    assert (y_fused - y_unfused).abs().max() <= 1e-5
    assert (y_fused - y_base).abs().max() > 1e-3                   # the adapter does change the model
    # Fused means plain Linear layers again: nothing LoRA-shaped left to run per step.
    assert type(pipe.transformer.blocks[0].attn1.to_q) is torch.nn.Linear


def test_bad_input_raises_clear_errors(pipe):
    exo, prior = videos()
    with pytest.raises(ValueError, match="4k \\+ 1"):
        pipe(np.concatenate([exo, exo[:1]]), np.concatenate([prior, prior[:1]]), PROMPT)
    with pytest.raises(ValueError, match="5 frames and the ego prior 9"):
        pipe(exo, np.concatenate([prior, prior[:4]]), PROMPT)
    with pytest.raises(ValueError, match="same height"):
        pipe(exo, np.zeros((FRAMES, 48, 32, 3), np.uint8), PROMPT)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe(exo, np.zeros((FRAMES, H, 40, 3), np.uint8), PROMPT)
    bad = prior.astype(np.float32) / 255
    bad[2, 3, 4] = math.nan
    with pytest.raises(ValueError, match="prior_video has NaN"):
        pipe(exo, bad, PROMPT)
    with pytest.raises(ValueError, match="\\(frames, height, width, 3\\)"):
        pipe(exo[..., 0], prior, PROMPT)
    tables = geometry_tables()
    wrong = GgaTables(tables.query_dir[:12], tables.query_frame[:12], tables.query_is_ego[:12],
                      tables.key_dir[:, :12])
    with pytest.raises(ValueError, match="12 tokens; this canvas has 24"):
        pipe(exo, prior, PROMPT, gga_tables=wrong)


def test_missing_or_mismatched_weight_files_name_what_is_wrong(weights, tmp_path):
    model, lora = weights
    with pytest.raises(WeightsError, match="model_index.json is missing.*hf download Wan-AI"):
        EgoxPipeline.from_local(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(WeightsError) as e:
        EgoxPipeline.from_local(broken)
    assert "transformer/*.safetensors or *.bin" in str(e.value) and "found in transformer/: config.json" in str(e.value)
    assert "tokenizer/" in str(e.value) and "Wan2.1-I2V-14B-480P-Diffusers" in str(e.value)
    index = json.loads((model / "model_index.json").read_text())
    assert index["transformer"][1] == "WanTransformer3DModel"      # a diffusers Wan I2V folder, as released

    with pytest.raises(WeightsError, match="pytorch_lora_weights.safetensors not found.*DAVIAN-Robotics/EgoX"):
        EgoxPipeline.from_local(model, tmp_path)
    config = EgoxPipeline.from_local(model, None, dtype=torch.float32, device="cpu").transformer.config
    wide = save_tiny_lora(tmp_path / "wide", rank=8)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(wide))
    tensors["transformer.blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(8, 64)
    save_file(tensors, str(wide))
    with pytest.raises(WeightsError, match="to_q.lora_A.weight is \\(8, 64\\), the model needs \\(8, 32\\)"):
        check_lora_file(wide, config)
    renamed = {k.replace("transformer.", "diffusion_model."): v for k, v in tensors.items()}
    save_file(renamed, str(wide))
    with pytest.raises(WeightsError, match="diffusers key names"):
        check_lora_file(wide, config)
    deep = save_tiny_lora(tmp_path / "deep", rank=8, num_layers=3)
    with pytest.raises(WeightsError, match="blocks.2.*the model has 2 blocks"):
        check_lora_file(deep, config)


@pytest.mark.skipif(not flex_attention_available(), reason="FlexAttention not available in this torch")
def test_the_flex_backend_gives_the_chunked_result_inside_the_model(pipe):
    # The compiled kernel computes the bias inside the attention (no L x L tensor); same clip as the exact chunks.
    # Also at a strength below 1, where the released rule scales every cosine.
    tables = geometry_tables()
    try:
        for strength in (3.0, 0.5):
            pipe.enable_gga(strength=strength, backend="chunked")
            chunked = run(pipe, output_type="latent", gga_tables=tables).ego
            pipe.enable_gga(strength=strength, backend="flex")
            flex = run(pipe, output_type="latent", gga_tables=tables).ego
            assert (flex - chunked).abs().max() <= 1e-4
    finally:
        pipe.enable_gga(strength=3.0, backend="auto")


def exo_frames(depth=True):
    """Five 160x120 exo frames of a textured wall 2 m away; the ego camera steps sideways."""
    from egox_ros.core.geometry.frames import ExoFrame
    cam = PinholeCamera(160, 120, 100.0, 100.0, 79.5, 59.5)
    rng = np.random.default_rng(1)
    frames = []
    for i in range(FRAMES):
        ego = np.eye(4)
        ego[0, 3] = 0.05 * i
        frames.append(ExoFrame(stamp_ns=i, rgb=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
                               depth_m=np.full((120, 160), 2.0, np.float32) if depth else None, camera=cam,
                               world_T_exo=np.eye(4), world_T_ego=ego, exo_frame_id="exo"))
    return frames


def test_exo_frames_are_resized_without_cropping_by_default_as_released():
    from egox_ros.core.generators.egox import fit_exo_frame
    frame = exo_frames()[0]
    rgb, depth, cam = fit_exo_frame(frame.rgb, frame.depth_m, frame.camera, W_EXO, H)
    assert rgb.shape == (H, W_EXO, 3) and depth.shape == (H, W_EXO)
    # The whole 160x120 frame, stretched to 64x32 (x by 0.4, y by 4/15): PIL-like bicubic, antialiased.
    ref = torch.nn.functional.interpolate(torch.from_numpy(frame.rgb).permute(2, 0, 1)[None].float(), size=(H, W_EXO),
                                          mode="bicubic", antialias=True, align_corners=False)
    assert torch.equal(rgb, ref[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8))
    # Intrinsics scaled per axis, then the principal point forced to the centre with the focal lengths scaled
    # alike (the released infer.py): (79.5 + 0.5) * 0.4 - 0.5 = 31.5 -> 32, (59.5 + 0.5) * 4/15 - 0.5 = 15.5 -> 16.
    sx, sy = W_EXO / 160, H / 120
    assert (cam.width, cam.height, cam.cx, cam.cy) == (W_EXO, H, W_EXO / 2, H / 2)
    assert cam.fx == pytest.approx(100.0 * sx * 32 / 31.5) and cam.fy == pytest.approx(100.0 * sy * 16 / 15.5)
    with pytest.raises(ValueError, match="exo fit must be one of"):
        fit_exo_frame(frame.rgb, frame.depth_m, frame.camera, W_EXO, H, fit="pad")


def test_exo_frames_are_centre_cropped_to_the_canvas_with_their_camera():
    from egox_ros.core.generators.egox import fit_exo_frame
    frame = exo_frames()[0]
    depth = frame.depth_m.copy()
    depth[:, 80:] = 3.0
    rgb, fitted_depth, cam = fit_exo_frame(frame.rgb, depth, frame.camera, W_EXO, H, fit="crop")
    assert rgb.shape == (H, W_EXO, 3) and rgb.dtype == torch.uint8 and fitted_depth.shape == (H, W_EXO)
    assert set(fitted_depth.unique().tolist()) == {2.0, 3.0}            # nearest: no invented depths
    # 160x120 -> centre crop 160x80 (rows 20..99) -> 64x32: a 3D point lands where its crop pixel went.
    point = torch.tensor([[0.3, -0.1, 2.0]], dtype=torch.float64)
    u, v = frame.camera.project(point)[0][0]
    u2, v2 = cam.project(point)[0][0]
    s = W_EXO / 160
    assert abs(float(u2) - ((float(u) + 0.5) * s - 0.5)) < 1e-9
    assert abs(float(v2) - ((float(v) - 20 + 0.5) * s - 0.5)) < 1e-9


def test_frames_of_the_released_depth_shape_are_centre_cropped_as_released():
    # The released depth maps are 796x448 (16:9 at the canvas height); the released exo videos are their central
    # 784 columns, and infer.py builds its GGA point map on the whole 796x448 grid with the principal point forced
    # to the centre, then crops [:, 6:790]. Check ours against that construction, written out here.
    from egox_ros.core.generators.egox import fit_exo_frame, is_released_depth_shape
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (448, 796, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 4.0, (448, 796)).astype(np.float32)
    camera = PinholeCamera(796, 448, 520.0, 515.0, 401.0, 221.0)
    assert is_released_depth_shape(796, 448, 784, 448) and not is_released_depth_shape(784, 448, 784, 448)
    out_rgb, out_depth, cam = fit_exo_frame(rgb, depth, camera, 784, 448)            # the default: 'released'
    assert torch.equal(out_rgb, torch.from_numpy(rgb[:, 6:790])) and torch.equal(out_depth,
                                                                                   torch.from_numpy(depth[:, 6:790]))
    # infer.py's point map (camera frame): K with cx = W / 2, cy = H / 2, fx, fy scaled by cx / cx0, cy / cy0.
    cx, cy = 796 / 2.0, 448 / 2.0
    fx, fy = 520.0 * cx / 401.0, 515.0 * cy / 221.0
    v, u = torch.meshgrid(torch.arange(448.0), torch.arange(796.0), indexing="ij")
    d = torch.from_numpy(depth).double()
    points = torch.stack([(u - cx) / fx * d, (v - cy) / fy * d, d], dim=-1)[:, 6:790]
    ours = cam.ray_grid().double() * out_depth.double()[..., None]
    assert (ours - points).abs().max() < 1e-4
    # 'resize' keeps the earlier behaviour (the whole frame stretched), and other sizes are resized by default.
    stretched, _, _ = fit_exo_frame(rgb, depth, camera, 784, 448, fit="resize")
    assert not torch.equal(stretched, out_rgb)
    _, _, other = fit_exo_frame(rgb[:, :790], depth[:, :790], PinholeCamera(790, 448, 520.0, 515.0, 401.0, 221.0),
                                784, 448)
    assert other.fx != cam.fx and (other.cx, other.cy) == (392.0, 224.0)


def test_the_egox_generator_makes_a_clip_from_frames_and_priors(weights):
    from egox_ros.core.config import EgoxConfig, GeneratorConfig
    from egox_ros.core.generators import ClipRequest, Prior, make_generator
    model, lora = weights
    config = EgoxConfig(model_path=str(model), lora_path=str(lora), clip_frames=FRAMES, exo_width=W_EXO,
                        exo_height=H, steps=2)
    generator = make_generator(GeneratorConfig(name="egox"), config)
    ego_cam = PinholeCamera(W_EGO, H, 20.0, 20.0, 15.5, 15.5)
    with pytest.raises(ValueError, match="ego_camera.height = egox.exo_height = 32"):
        generator.check_ego_camera(PinholeCamera(32, 48, 20.0, 20.0, 15.5, 23.5))
    _, prior_video = videos()
    priors = [Prior(rgb=p, mask=p.any(-1), depth_m=np.zeros(p.shape[:2], np.float32)) for p in prior_video]
    with_depth = generator.generate(ClipRequest(exo_frames(), priors, ego_cam))
    assert len(with_depth.rgb) == FRAMES and with_depth.rgb[0].shape == (H, W_EGO, 3)
    assert all(v.all() for v in with_depth.valid)
    settings = generator.settings()
    assert settings["gga"] == "released, strength 3.0, auto, released ego rays"
    assert (settings["clip_image"], settings["exo_latent"], settings["prior_latent"], settings["exo_fit"],
            settings["negative_prompt"], settings["posterior_noise"], settings["output_uint8"], settings["seed"]) == \
        ("released", "sample", "sample", "released", "", "released", "truncate", "42")
    assert "(rank 256, scale 1.0)" in generator.settings()["lora"]
    # Without exo depth there is no geometry for GGA: the clip is made without it (and says so), and differs.
    without_depth = generator.generate(ClipRequest(exo_frames(depth=False), priors, ego_cam))
    assert not np.array_equal(np.stack(with_depth.rgb), np.stack(without_depth.rgb))
    assert generator.settings()["gga"] == "not applied: 5 of 5 frames have no exo depth"
    with pytest.raises(ValueError, match="needs 5 frames, got 4"):
        generator.generate(ClipRequest(exo_frames()[:4], priors[:4], ego_cam))


def test_a_partly_downloaded_sharded_checkpoint_names_the_missing_shards(weights, tmp_path):
    from egox_ros.core.egox.weights import check_model_folder
    model, _ = weights
    partial = tmp_path / "partial"
    shutil.copytree(model, partial)
    index = {"metadata": {}, "weight_map": {"blocks.0.attn1.to_q.weight": "diffusion_pytorch_model-00001-of-00002"
                                                                         ".safetensors",
                                            "blocks.1.attn1.to_q.weight": "diffusion_pytorch_model-00002-of-00002"
                                                                          ".safetensors"}}
    (partial / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (partial / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="1 of the 2 shards .* transformer/: diffusion_pytorch_model-00002-of"):
        check_model_folder(partial)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading needs a CUDA device (never in CI)")
@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_offload_modes_give_the_same_clip_on_a_gpu(weights, offload):
    model, lora = weights
    reference = EgoxPipeline.from_local(model, lora, dtype=torch.float32, device="cpu")
    gpu = EgoxPipeline.from_local(model, lora, dtype=torch.float32, device="cuda", offload=offload)
    for p in (reference, gpu):
        p.set_progress_bar_config(disable=True)
    expected = run(reference, output_type="latent", gga_tables=geometry_tables()).ego
    got = run(gpu, output_type="latent", gga_tables=geometry_tables()).ego
    assert torch.allclose(got.cpu(), expected, atol=1e-3)
