"""The `model` depth source: a per-frame monocular depth model from a local Hugging Face folder (transformers).

Loads with AutoModelForDepthEstimation + AutoImageProcessor from the folder only (no download), and uses the
checkpoint's own image processor: its preprocessing (resize, normalise) and its post_process_depth_estimation, with
target sizes = the input image sizes, so every map comes back at the image's resolution.

Which kind of depth a checkpoint gives (``kind: auto``), from its config.json:

==========================  ======================================================  ===================
model_type                  rule                                                    kind
==========================  ======================================================  ===================
depth_anything              depth_estimation_type 'metric' (V2 Metric: sigmoid x    metric (metres)
                            max_depth, 20 m indoor / 80 m outdoor)
depth_anything              depth_estimation_type 'relative' (V1/V2, ReLU head)     relative_inverse
dpt                         MiDaS-style ReLU head (Intel/dpt-large, dpt-hybrid)     relative_inverse
glpn                        sigmoid x max_depth head                                metric (metres)
zoedepth                    metric bins head                                        metric (metres)
any other depth model_type  no rule: set ``kind`` explicitly                        (error)
==========================  ======================================================  ===================

``kind: metric | relative_inverse`` overrides the rule (a fine-tuned checkpoint whose config says otherwise).

Units after post-processing (transformers 5.24): metric maps are metres, NaN where the model gives no estimate
(non-finite, or <= 0 from the bicubic upsampling's overshoot); relative inverse maps are unitless, larger = nearer,
<= 0 where the model gives no estimate (the ReLU heads output 0 for "infinitely far", e.g. sky), NaN where
non-finite. Post-processing upsamples bicubically, so values can overshoot the head's range slightly at edges.

ZoeDepth: its post-processing also removes the reflect padding its preprocessing adds (it needs the source sizes).
Without torchvision, transformers' PIL ZoeDepth processor cannot post-process (its resize is torchvision's); then
the same steps run here with torch's bicubic interpolation (identical for tensors without antialiasing).
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from egox_ros.core.config import param, validate
from egox_ros.core.depth.base import DEPTH_KINDS, DepthKind, DepthMap, DepthSource
from egox_ros.core.io.folder_listing import describe_folder

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# model_type -> kind, for families whose kind does not depend on their config (see the module docstring).
FAMILY_KINDS: dict[str, DepthKind] = {"dpt": "relative_inverse", "glpn": "metric", "zoedepth": "metric"}
# model_types whose kind is their config's depth_estimation_type ('metric' -> metric, 'relative' -> relative_inverse).
DEPTH_TYPE_FAMILIES = ("depth_anything",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DOWNLOAD_HINT = "hf download depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf --local-dir {path}"


class DepthModelError(RuntimeError):
    """A depth model folder that cannot be used: says what was expected, what was found and how to get one."""


@dataclass
class HfDepthModelConfig:
    """A per-frame depth model from a local Hugging Face folder (the `model` depth source)."""
    model_path: str = param("", "local Hugging Face folder of a depth-estimation checkpoint (config.json, "
                                "preprocessor_config.json, weights), e.g. Depth Anything V2 Metric")
    kind: str = param("auto", "what the checkpoint outputs: 'auto' (from its config: Depth Anything by "
                              "depth_estimation_type, DPT relative inverse, GLPN and ZoeDepth metric), 'metric' "
                              "(metres) or 'relative_inverse' (affine-ambiguous inverse depth)",
                      choices=("auto", *DEPTH_KINDS))
    batch_size: int = param(4, "frames per forward pass", (1, 1024))
    dtype: str = param("auto", "model dtype; 'auto' = float16 on CUDA (finer depth steps than bfloat16), float32 "
                               "elsewhere; float16 on CPU falls back to float32",
                       choices=("auto", *DTYPES))

    def __post_init__(self) -> None:
        validate(self)


def resolve_dtype(request: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype to run in for `request` (a HfDepthModelConfig.dtype) on `device`, and a note ('' if as asked).

    auto: CUDA -> float16 (its 10-bit mantissa keeps metric depth to about 4 mm at 8 m where bfloat16's 7 bits
    give 3-6 cm steps); any other device -> float32.
    float16 on CPU -> float32 (many CPU kernels lack float16 and the rest are slower than float32);
    bfloat16 on a CUDA GPU without bfloat16 support -> float32. bfloat16 on CPU runs as asked (slow on CPUs without
    native bfloat16)."""
    cuda = device.type == "cuda"
    if request == "auto":
        return (torch.float16 if cuda else torch.float32), ""
    dtype = DTYPES[request]
    if dtype == torch.float16 and device.type == "cpu":
        return torch.float32, "float16 was requested on the CPU, where it is not supported by all ops; using float32"
    if dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
        return torch.float32, f"bfloat16 was requested on {device}, which does not support it; using float32"
    return dtype, ""


def auto_kind(model_config) -> DepthKind | None:
    """The kind the rule of the module docstring gives a transformers config; None when there is no rule."""
    model_type = getattr(model_config, "model_type", "")
    if model_type in DEPTH_TYPE_FAMILIES:
        return {"metric": "metric", "relative": "relative_inverse"}.get(
            getattr(model_config, "depth_estimation_type", "relative"))
    return FAMILY_KINDS.get(model_type)


def _depth_model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES
    return list(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)


def _folder_error(path: Path, problem: str) -> DepthModelError:
    found = describe_folder(path)
    return DepthModelError(
        f"depth model folder '{path}': {problem}.\n"
        f"Expected a local Hugging Face depth-estimation checkpoint: config.json (a depth-estimation architecture, "
        f"model_type one of {', '.join(_depth_model_types())}; e.g. DepthAnythingForDepthEstimation), "
        f"preprocessor_config.json (its image processor) and weights ({' or '.join(WEIGHT_FILES)}).\n"
        f"Found: {found}.\n"
        f"Get one with e.g.: {DOWNLOAD_HINT.format(path=path)}")


def check_model_folder(model_path: str) -> tuple[Path, dict]:
    """The folder as a Path and its config.json, after checking that it holds a depth-estimation checkpoint;
    raises DepthModelError saying what is missing or wrong."""
    if not model_path:
        raise DepthModelError("no depth model folder given (model_path is empty). Download one with e.g.: "
                              + DOWNLOAD_HINT.format(path="DIR") + " and set model_path to DIR")
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise _folder_error(path, "does not exist" if not path.exists() else "is not a folder")
    if not (path / "config.json").is_file():
        raise _folder_error(path, "has no config.json")
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise _folder_error(path, f"config.json is not readable JSON ({e})") from e
    model_type = raw.get("model_type", "")
    if model_type not in _depth_model_types():
        what = f"a '{model_type}' model" if model_type else "a config without model_type"
        architectures = raw.get("architectures") or []
        if architectures:
            what += f" ({', '.join(architectures)})"
        raise _folder_error(path, f"holds {what}, which is not a depth-estimation model")
    missing = []
    if not (path / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("weights")
    if missing:
        raise _folder_error(path, f"has no {' and no '.join(missing)}")
    return path, raw


def _zoedepth_post_process(processor, outputs, sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """ZoeDepthImageProcessor.post_process_depth_estimation (transformers 5.24) with torch's bicubic resize instead
    of torchvision's (the same for tensors without antialiasing): for the PIL processor without torchvision."""
    results = []
    for depth, (height, width) in zip(outputs.predicted_depth.unsqueeze(1), sizes):
        pad_h = pad_w = 0
        if processor.do_pad:
            pad_h, pad_w = int(np.sqrt(height / 2) * 3), int(np.sqrt(width / 2) * 3)
        depth = torch.nn.functional.interpolate(depth[None], size=(height + 2 * pad_h, width + 2 * pad_w),
                                                mode="bicubic", align_corners=False)[0]
        depth = depth[:, pad_h:pad_h + height, pad_w:pad_w + width]
        results.append({"predicted_depth": depth[0]})
    return results


class HfDepthModel(DepthSource):
    """A transformers depth-estimation checkpoint run per frame (see the module docstring for kinds and units).

    config: HfDepthModelConfig; device: torch device of the model ('cpu', 'cuda', ...). Loads at construction from
    config.model_path only (local_files_only); raises DepthModelError for a missing, partial, non-depth or unloadable
    folder. Attributes: family (model_type), kind, dtype (what it runs in), notes (fallbacks taken, e.g. float16 on
    CPU -> float32; also logged). Not thread-safe: one estimate at a time."""

    name = "model"

    def __init__(self, config: HfDepthModelConfig, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DepthModelError(f"depth model device '{device}' requested, but CUDA is not available")
        self.path, raw = check_model_folder(config.model_path)
        self.family: str = raw["model_type"]
        self.notes: list[str] = []
        self.dtype, note = resolve_dtype(config.dtype, self.device)
        if note:
            self.notes.append(note)

        from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation
        try:
            model_config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to parse is reported with the folder
            raise _folder_error(self.path, f"config.json could not be loaded ({type(e).__name__}: {e})") from e
        rule = auto_kind(model_config)
        if config.kind == "auto":
            if rule is None:
                raise DepthModelError(
                    f"depth model '{self.path}' is a '{self.family}' model, for which there is no rule saying whether "
                    f"it gives metric or relative inverse depth; set kind to 'metric' or 'relative_inverse'")
            self._kind: DepthKind = rule
        else:
            self._kind = config.kind
            if rule is not None and rule != config.kind:
                self.notes.append(f"kind '{config.kind}' set explicitly; the config of this '{self.family}' "
                                  f"model suggests '{rule}'")
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise _folder_error(self.path, f"preprocessor_config.json could not be loaded ({type(e).__name__}: "
                                           f"{e})") from e
        if not hasattr(self.processor, "post_process_depth_estimation"):
            raise _folder_error(self.path, f"its image processor {type(self.processor).__name__} has no depth "
                                           "post-processing (preprocessor_config.json of another model?)")
        try:
            model, info = AutoModelForDepthEstimation.from_pretrained(
                self.path, local_files_only=True, dtype=self.dtype, output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            raise _folder_error(self.path, f"the weights could not be loaded ({type(e).__name__}: {e})") from e
        # A missing mask_token is harmless (masked-image pretraining only); anything else would run untrained.
        missing = [k for k in info.get("missing_keys") or [] if not k.endswith("mask_token")]
        if missing:
            raise _folder_error(self.path, f"the weights lack {len(missing)} parameters of the model (e.g. "
                                           f"{', '.join(sorted(missing)[:3])}): a partial or mismatched checkpoint")
        self.model = model.to(self.device).eval()

        post = self.processor.post_process_depth_estimation
        self._needs_source_sizes = "source_sizes" in inspect.signature(post).parameters
        self._own_zoedepth_post = False
        if self._needs_source_sizes:
            from transformers.utils import is_torchvision_available
            self._own_zoedepth_post = not is_torchvision_available()
            if self._own_zoedepth_post:
                self.notes.append("torchvision is not installed: ZoeDepth's post-processing runs with torch's "
                                  "bicubic resize")
        for note in self.notes:
            log.warning("depth model %s: %s", self.path, note)

    @property
    def kind(self) -> DepthKind:
        return self._kind

    def estimate(self, images: list[np.ndarray]) -> list[DepthMap]:
        """One DepthMap per image (values (H, W) float32 at the image's size, in the unit of `kind`). images:
        (H, W, 3) uint8 RGB; images of one size are batched by config.batch_size, sizes may differ."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                    and image.dtype == np.uint8):
                raise ValueError(f"image {i}: expected an (H, W, 3) uint8 RGB array, got "
                                 f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}")
            groups.setdefault(image.shape[:2], []).append(i)
        results: list[DepthMap | None] = [None] * len(images)
        step = self.config.batch_size
        for size, indices in groups.items():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                for i, values in zip(chunk, self._run([images[i] for i in chunk], size)):
                    results[i] = DepthMap(values, self._kind)
        return results

    @torch.inference_mode()
    def _run(self, batch: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        """Depth (N, H, W) float32 of N images of one size (H, W)."""
        try:
            inputs = self.processor(images=batch, return_tensors="pt", input_data_format="channels_last")
        except ValueError as e:      # e.g. GLPN rounds sizes down to multiples of 32: a 20 px image becomes 0 px
            raise ValueError(f"the image processor of depth model '{self.path}' ({type(self.processor).__name__}) "
                             f"cannot take {size[0]}x{size[1]} (H x W) images: {e}") from e
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = self.model(**inputs)
        for key, value in outputs.items():          # post-process in float32 (bicubic resize of half is lossy)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                outputs[key] = value.float()
        sizes = [size] * len(batch)
        if self._own_zoedepth_post:
            processed = _zoedepth_post_process(self.processor, outputs, sizes)
        elif self._needs_source_sizes:
            processed = self.processor.post_process_depth_estimation(outputs, source_sizes=sizes, target_sizes=sizes)
        else:
            processed = self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
        maps = [p["predicted_depth"] for p in processed]
        for m in maps:
            if m.numel() != size[0] * size[1]:
                raise RuntimeError(f"{type(self.processor).__name__}.post_process_depth_estimation returned a map "
                                   f"of shape {tuple(m.shape)} for an image of {size[0]}x{size[1]} (H x W)")
        depth = torch.stack([m.reshape(size) for m in maps]).float()   # reshape: DPT's squeeze() drops H or W == 1
        valid = torch.isfinite(depth)
        if self._kind == "metric":
            valid &= depth > 0
        return torch.where(valid, depth, torch.full_like(depth, float("nan"))).cpu().numpy()
