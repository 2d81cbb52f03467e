"""The EgoX pipeline: Wan 2.1 image-to-video with the EgoX canvas, clean exo latent and GGA.

A `WanImageToVideoPipeline` (so diffusers' loading, LoRA loader, prompt and image encoders, offloading and
progress bar apply unchanged) whose `__call__` runs EgoX sampling (../shared/docs/egox-method.md, sections 3-4):

1. encode the exo video (F, 448, 784) and the ego prior video (F, 448, 448) with the VAE: x_0 and p_0 (draws from
   the VAE posterior by default, as the released code does; or its mean);
2. canvas [x_0 | z_T], z_T Gaussian noise on the ego half only; condition channels mask + [x_0 | p_0]; the CLIP image
   encoder sees frame 0 of the VAE decode of [x_0 | z_T] (released), of the [exo | prior] canvas, or of the exo video;
3. every step: the transformer (twice with classifier-free guidance) with GGA on its self-attention, the exo half
   of the velocity zeroed, a scheduler step, x_0 written back into the exo half;
4. decode the ego half only, to uint8 by truncation as the released code writes its frames (or rounding).

Random draws: z_T from the caller's generator (its first draw); the posterior samples (exo, then prior) from
`posterior_generator`, or from the caller's generator after z_T when none is given. `seeded_generators(seed)` gives
the pair the released inference seeds: a CPU generator for z_T and the stream of its seeded global RNG (on the
model's device) for the posterior samples. So a seed gives one clip, and z_T does not depend on the latent options.
docs/egox-fidelity.md compares each step with the released inference code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor

from egox_ros.core.attention.directions import CELL_PX, latent_frame_indices
from egox_ros.core.attention.gga import GgaTables
from egox_ros.core.attention.processor import GgaState, install_gga
from egox_ros.core.egox.canvas import LatentCanvas
from egox_ros.core.egox.weights import LoraSummary, WeightsError, check_lora_file, check_model_folder, lora_file

TEXT_TOKENS = 512   # UMT5 context length the Wan transformer's cross-attention assumes
CLIP_IMAGES = ("released", "training", "canvas", "exo")   # what the CLIP image encoder sees (EgoxPipeline.__call__)
LATENT_MODES = ("sample", "mean")              # VAE posterior sample (released) or mean
OUTPUT_UINT8 = ("truncate", "round")           # float frames in [0, 1] -> uint8: the released code truncates


@dataclass
class EgoxOutput:
    """ego: (F, H, W, 3) uint8 ego frames (or the (1, 16, F_latent, h, w) ego latents for output_type='latent');
    exo_latent: (1, 16, F_latent, h, w_exo) normalised clean exo latent the canvas was built around."""
    ego: np.ndarray | torch.Tensor
    exo_latent: torch.Tensor


def _video_tensor(video, name: str) -> torch.Tensor:
    """(F, H, W, 3) uint8 (numpy, tensor or list of frames) -> (1, 3, F, H, W) float32 in [-1, 1]."""
    if isinstance(video, (list, tuple)):
        video = np.stack([np.asarray(f) for f in video]) if len(video) else np.zeros((0, 0, 0, 3), np.uint8)
    x = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be (frames, height, width, 3) RGB, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif x.is_floating_point():
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} has NaN or infinite values")
        if x.min() < 0.0 or x.max() > 1.0:
            raise ValueError(f"{name} as floats must lie in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        x = x.float() * 2.0 - 1.0
    else:
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {x.dtype}")
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def _to_uint8(video: torch.Tensor, conversion: str = "truncate") -> np.ndarray:
    """(1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8. As the released code: (x / 2 + 0.5) clamped to [0, 1] (the
    video processor's float frames), times 255, then 'truncate' (numpy's astype(uint8), the released code) or
    'round' (to the nearest level)."""
    x = (video[0].float() / 2 + 0.5).clamp(0.0, 1.0) * 255.0
    if conversion == "round":
        x = x.round()
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


class EgoxPipeline(WanImageToVideoPipeline):
    """EgoX sampling on a Wan 2.1 image-to-video checkpoint; see the module docstring."""

    gga: GgaState | None = None
    lora: LoraSummary | None = None      # the fused adapter, if any

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_local(cls, model_path: str | Path, lora_path: str | Path | None = None, *,
                   dtype: torch.dtype = torch.bfloat16, device: str = "cuda", offload: str = "none",
                   lora_scale: float = 1.0) -> "EgoxPipeline":
        """Load the base checkpoint from a local diffusers folder and fuse the EgoX LoRA (if given).

        dtype applies to the transformer and text encoder; the VAE and the CLIP image encoder stay float32 (as
        diffusers recommends for Wan). offload: 'none' (all on `device`), 'model' (each model moves to the GPU
        while it runs) or 'sequential' (layer by layer: least memory, slowest). Raises WeightsError naming what
        is missing; nothing is downloaded."""
        root = check_model_folder(model_path)
        if lora_path:
            lora_file(lora_path)   # fail before the slow base load
        pipe = cls.from_pretrained(root, local_files_only=True, dtype={
            "transformer": dtype, "text_encoder": dtype, "default": torch.float32})
        if lora_path:
            pipe.load_egox_lora(lora_path, lora_scale)
        if offload == "none":
            pipe.to(device)
        elif offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            raise ValueError(f"unknown offload {offload!r}; use 'none', 'model' or 'sequential'")
        return pipe

    def load_egox_lora(self, lora_path: str | Path, scale: float = 1.0) -> LoraSummary:
        """Check the adapter against the transformer, load it with diffusers' loader and fuse it into the weights
        (no per-step cost); the LoRA layers are removed after fusing. Call before any offloading (from_local does):
        fusing does not reach weights that offload hooks hold elsewhere."""
        summary = check_lora_file(lora_path, self.transformer.config)
        try:
            self.load_lora_weights(str(summary.path.parent), weight_name=summary.path.name, adapter_name="egox")
        except Exception as e:  # noqa: BLE001 - diffusers / peft raise several types
            raise WeightsError(f"loading the LoRA {summary.path} failed: {type(e).__name__}: {e}") from e
        self.fuse_lora(lora_scale=scale, components=["transformer"], adapter_names=["egox"])
        self.unload_lora_weights()
        self.lora = summary
        return summary

    def enable_gga(self, strength: float = 3.0, mode: str = "released", backend: str = "auto") -> GgaState:
        """Install GGA on the self-attention of every block (once); later calls update the settings."""
        if self.gga is None:
            self.gga = GgaState()
            install_gga(self.transformer, self.gga)
        self.gga.strength, self.gga.mode, self.gga.backend = float(strength), mode, backend
        return self.gga

    def seeded_generators(self, seed: int) -> tuple[torch.Generator, torch.Generator]:
        """(generator, posterior_generator) as the released inference seeds them: z_T from a CPU generator seeded
        with `seed` (wan.py), the VAE posterior samples from the global RNG that infer.py seeds with
        torch.manual_seed(seed) (every device) and that nothing draws from before the exo encode: the same stream
        as a fresh generator on the model's execution device seeded with `seed`, which this returns (so the
        process's global RNG is left alone). The released run of a clip matches when it is the run's first clip."""
        return (torch.Generator(device="cpu").manual_seed(int(seed)),
                torch.Generator(device=self._execution_device).manual_seed(int(seed)))

    # ------------------------------------------------------------------ pieces
    def _normalise(self, latents: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents)
        std = torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(latents)
        return latents * std + mean if inverse else (latents - mean) / std

    def encode_video(self, video: torch.Tensor, mode: str = "mean",
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(1, 3, F, H, W) in [-1, 1] -> normalised latent (1, 16, F_latent, H/8, W/8) float32 on the execution
        device. mode 'mean': the VAE posterior mean; 'sample': mean + std * noise drawn from `generator` (what the
        released code encodes with, there unseeded). Inputs go to the execution device, where offload hooks run
        the VAE."""
        if mode not in LATENT_MODES:
            raise ValueError(f"latent mode must be one of {list(LATENT_MODES)}, got {mode!r}")
        device = self._execution_device
        latents = retrieve_latents(self.vae.encode(video.to(device, self.vae.dtype)), generator=generator,
                                   sample_mode="sample" if mode == "sample" else "argmax")
        return self._normalise(latents.to(device, torch.float32))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> (1, 3, F, H, W) in [-1, 1]."""
        latents = self._normalise(latents.to(self._execution_device, torch.float32), inverse=True)
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]

    def released_clip_image(self, canvas_latents: torch.Tensor) -> torch.Tensor:
        """The released inference's CLIP image: frame 0 of the VAE decode of the canvas latent [x_0 | z_T]
        (normalised, (1, 16, F_latent, h, w)), as (1, 3, H, W) float32 in [0, 1].

        The released code decodes the whole canvas video and keeps frame 0. Wan's VAE is causal in time (frame 0
        depends on latent frame 0 only), so decoding the first latent frame gives the same image: the cost is one
        VAE decode of one latent frame of the canvas (448 x 1232), not of the clip. Values are clamped to [0, 1];
        the released code passes them unclamped, which the CLIP image processor only accepts inside [0, 1], so the
        clamp changes nothing wherever the released code runs."""
        first = self.decode_latents(canvas_latents[:, :, :1])[:, :, 0].float()
        return ((first + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_float_image(self, image: torch.Tensor, device=None, rescale: bool = False) -> torch.Tensor:
        """CLIP penultimate hidden states of a (1, 3, H, W) float image in [0, 1] (as the released inference passes
        it: no uint8 rounding, the processor told not to rescale). rescale=True: the processor's default rescale by
        1/255 applied on top, as the released training's encode_first_frame called it on an image already in [0, 1]
        (so CLIP saw it divided by 255: nearly black)."""
        kwargs = {} if rescale else {"do_rescale": False}
        pixels = self.image_processor(images=image.float().cpu(), return_tensors="pt", **kwargs).to(
            get_module_execution_device(self.image_encoder))
        hidden = self.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]
        return hidden.to(device or self._execution_device)

    def _check_videos(self, exo: torch.Tensor, prior: torch.Tensor, gga_tables: GgaTables | None) -> None:
        frames = exo.shape[2]
        latent_frame_indices(frames)   # raises for a count Wan cannot take (4k + 1)
        if prior.shape[2] != frames:
            raise ValueError(f"the exo video has {frames} frames and the ego prior {prior.shape[2]}; they must match")
        (he, we), (hg, wg) = exo.shape[3:], prior.shape[3:]
        for what, (h, w) in (("exo", (he, we)), ("ego prior", (hg, wg))):
            if h % CELL_PX or w % CELL_PX:
                raise ValueError(f"{what} frames are {w}x{h}; width and height must be multiples of {CELL_PX}")
        if he != hg:
            raise ValueError(f"exo ({we}x{he}) and ego prior ({wg}x{hg}) frames must have the same height to share "
                             "the canvas")
        if gga_tables is not None:
            tokens = len(latent_frame_indices(frames)) * (he // CELL_PX) * ((we + wg) // CELL_PX)
            if gga_tables.length != tokens:
                raise ValueError(f"the GGA tables describe {gga_tables.length} tokens; this canvas has {tokens}")

    def _text_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided: bool,
                         device, dtype):
        if prompt is None and prompt_embeds is None:
            raise ValueError("give a prompt or prompt_embeds")
        if prompt_embeds is None and self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder; pass prompt_embeds (and negative_prompt_embeds)")
        if guided and negative_prompt_embeds is None and prompt_embeds is not None and prompt is None:
            raise ValueError("classifier-free guidance with prompt_embeds needs negative_prompt_embeds too")
        positive, negative = self.encode_prompt(prompt, negative_prompt, do_classifier_free_guidance=guided,
                                                prompt_embeds=prompt_embeds,
                                                negative_prompt_embeds=negative_prompt_embeds,
                                                max_sequence_length=TEXT_TOKENS, device=device)
        for name, e in (("prompt_embeds", positive), ("negative_prompt_embeds", negative)):
            if e is not None and (e.ndim != 3 or e.shape[1] != TEXT_TOKENS):
                raise ValueError(f"{name} must be (batch, {TEXT_TOKENS}, dim), got {tuple(e.shape)}")
        return positive.to(device, dtype), None if negative is None else negative.to(device, dtype)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, exo_video, prior_video, prompt: str | None = None, negative_prompt: str | None = None, *,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 image_embeds: torch.Tensor | None = None, clip_image: str = "released", exo_latent: str = "sample",
                 prior_latent: str = "sample", num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 generator: torch.Generator | None = None, posterior_generator: torch.Generator | None = None,
                 gga_tables: GgaTables | None = None, output_type: str = "np", output_uint8: str = "truncate",
                 step_callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> EgoxOutput:
        """Generate the ego clip.

        exo_video: (F, He, We, 3) uint8 (or float in [0, 1]), F = 4k + 1 (49 for the released weights, He x We =
        448 x 784); prior_video: (F, He, Wg, 3) likewise (448 x 448), black where the prior has holes. gga_tables:
        direction tables of this canvas (egox_ros.core.attention.directions); None runs without GGA.
        prompt_embeds / negative_prompt_embeds (1, 512, text_dim) and image_embeds (1, tokens, image_dim) replace
        the text and CLIP encoders. negative_prompt None or "" is the empty prompt (the released inference's).
        clip_image: what the CLIP encoder sees: 'released' (default; the released inference: frame 0 of the VAE
        decode of [x_0 | z_T], the clean exo latent beside this clip's initial noise, so deterministic given the
        generator; costs one VAE decode of the first latent frame of the canvas, see released_clip_image),
        'training' (what CLIP saw in the released training: frame 0 of [exo | ego] in [0, 1], rescaled again by the
        processor's default 1/255, nearly black; the prior stands in for the real ego frame, which at 1/255 of the
        range changes little), 'canvas' (frame 0 of [exo | prior]) or 'exo' (frame 0 of the exo video, as plain Wan
        I2V). exo_latent / prior_latent: 'sample' (default; a draw from the VAE posterior, as the released
        code encodes both videos) or 'mean' (the posterior mean). generator: z_T, its first draw; posterior_generator:
        the posterior samples' noise (exo first, then prior), on the model's execution device or the CPU; None: drawn
        from `generator` after z_T (`seeded_generators` gives the released pair). output_uint8: 'truncate' (the
        released code's conversion of the float frames) or 'round'.
        step_callback(i, t, canvas_latents) is called after every step with the (1, 16, F_latent, h, w) canvas.
        Returns EgoxOutput with the (F, He, Wg, 3) uint8 ego frames."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' (uint8 frames) or 'latent', got {output_type!r}")
        if clip_image not in CLIP_IMAGES:
            raise ValueError(f"clip_image must be one of {list(CLIP_IMAGES)}, got {clip_image!r}")
        for name, mode in (("exo_latent", exo_latent), ("prior_latent", prior_latent)):
            if mode not in LATENT_MODES:
                raise ValueError(f"{name} must be one of {list(LATENT_MODES)}, got {mode!r}")
        if output_uint8 not in OUTPUT_UINT8:
            raise ValueError(f"output_uint8 must be one of {list(OUTPUT_UINT8)}, got {output_uint8!r}")
        exo, prior = _video_tensor(exo_video, "exo_video"), _video_tensor(prior_video, "prior_video")
        self._check_videos(exo, prior, gga_tables)
        device = self._execution_device
        dtype = self.transformer.dtype
        self._guidance_scale = guidance_scale
        guided = guidance_scale > 1.0

        text, negative_text = self._text_embeddings(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                                    guided, device, dtype)
        if image_embeds is None and self.transformer.config.image_dim is not None and self.image_encoder is None:
            raise ValueError("the transformer expects CLIP image embeddings: the pipeline needs an image encoder, "
                             "or pass image_embeds")

        # Random draws, always in this order: z_T, the exo posterior sample, the prior's (the last two from
        # posterior_generator when given).
        noise_shape = (1, self.vae.config.z_dim, (exo.shape[2] - 1) // self.vae_scale_factor_temporal + 1,
                       prior.shape[3] // self.vae_scale_factor_spatial, prior.shape[4] // self.vae_scale_factor_spatial)
        noise = randn_tensor(noise_shape, generator=generator, device=device, dtype=torch.float32)
        exo_mode, prior_mode = exo_latent, prior_latent      # the names hold the latents from here on
        posterior = generator if posterior_generator is None else posterior_generator
        exo_latent = self.encode_video(exo, exo_mode, posterior)
        prior_latent = self.encode_video(prior, prior_mode, posterior)
        if prior_latent.shape != noise.shape:
            raise ValueError(f"the VAE gave a {tuple(prior_latent.shape)} prior latent; expected {noise_shape}")
        canvas = LatentCanvas(exo_width=exo_latent.shape[-1], ego_width=prior_latent.shape[-1])
        condition = canvas.condition(exo_latent, prior_latent)
        latents = canvas.join(exo_latent, noise)

        if image_embeds is not None:
            image_embeds = image_embeds.to(device, dtype)
        elif self.transformer.config.image_dim is not None:
            if clip_image == "released":
                image_embeds = self.encode_float_image(self.released_clip_image(latents), device).to(dtype)
            elif clip_image == "training":
                first = (torch.cat([exo[0, :, 0], prior[0, :, 0]], dim=-1)[None] + 1.0) / 2.0
                image_embeds = self.encode_float_image(first, device, rescale=True).to(dtype)
            else:
                first = exo[0, :, 0] if clip_image == "exo" else torch.cat([exo[0, :, 0], prior[0, :, 0]], dim=-1)
                first = ((first.permute(1, 2, 0) + 1.0) * 127.5).round().to(torch.uint8).numpy()
                image_embeds = self.encode_image(first, device).to(dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if gga_tables is not None:
            if self.gga is None:
                self.enable_gga()
            self.gga.tables = gga_tables
        elif self.gga is not None:
            self.gga.tables = None
        try:
            with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
                for i, t in enumerate(self.scheduler.timesteps):
                    model_input = canvas.model_input(latents, condition).to(dtype)
                    timestep = t.expand(1)
                    velocity = self.transformer(hidden_states=model_input, timestep=timestep,
                                                encoder_hidden_states=text, encoder_hidden_states_image=image_embeds,
                                                return_dict=False)[0]
                    if guided:
                        unconditional = self.transformer(hidden_states=model_input, timestep=timestep,
                                                         encoder_hidden_states=negative_text,
                                                         encoder_hidden_states_image=image_embeds,
                                                         return_dict=False)[0]
                        velocity = unconditional + guidance_scale * (velocity - unconditional)
                    velocity = canvas.keep_exo_clean(velocity.float())
                    latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                    latents = canvas.join(exo_latent, canvas.ego(latents))   # write the clean exo latent back
                    if step_callback is not None:
                        step_callback(i, t, latents)
                    bar.update()
            ego_latent = canvas.ego(latents)
            ego = ego_latent if output_type == "latent" else _to_uint8(self.decode_latents(ego_latent), output_uint8)
        finally:
            if self.gga is not None:
                self.gga.tables = None
            self.maybe_free_model_hooks()   # under model offload: nothing left on the GPU, also after an error
        return EgoxOutput(ego=ego, exo_latent=exo_latent)
