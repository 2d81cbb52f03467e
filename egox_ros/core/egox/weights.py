"""Checks of the local weights EgoX needs, with errors that say what is missing, what was found and what to get.

Nothing here downloads. The base checkpoint is a diffusers folder (`model_path`, as saved by
`hf download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --local-dir DIR`); the adapter is the authors'
`pytorch_lora_weights.safetensors` (diffusers key names, rank 256) from the Hugging Face repo DAVIAN-Robotics/EgoX.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from egox_ros.core.io.folder_listing import describe_folder

BASE_REPO = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
LORA_REPO = "DAVIAN-Robotics/EgoX"
LORA_FILE = "pytorch_lora_weights.safetensors"
BASE_HINT = f"download it with: hf download {BASE_REPO} --local-dir <model_path>"
LORA_HINT = f"download it with: hf download {LORA_REPO} {LORA_FILE} --local-dir <lora_dir>"

# What each component folder must hold (any one of the alternatives).
_COMPONENT_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "transformer": (("config.json",), ("*.safetensors", "*.bin")),
    "vae": (("config.json",), ("*.safetensors", "*.bin")),
    "text_encoder": (("config.json",), ("*.safetensors", "*.bin")),
    "image_encoder": (("config.json",), ("*.safetensors", "*.bin")),
    "tokenizer": (("tokenizer.json", "spiece.model", "tokenizer_config.json"),),
    "image_processor": (("preprocessor_config.json",),),
    "scheduler": (("scheduler_config.json",),),
}
# diffusers' names of the released adapter: transformer.blocks.<i>.attn<1|2>.<to_q|to_k|to_v|to_out.0>.lora_<A|B>.weight
LORA_KEY = re.compile(r"^transformer\.blocks\.(\d+)\.attn([12])\.(to_q|to_k|to_v|to_out\.0)\.lora_([AB])\.weight$")


class WeightsError(RuntimeError):
    """Missing or mismatched weight files; the message names what is missing, what was found and what to download."""


def _has(folder: Path, pattern: str) -> bool:
    return any(folder.glob(pattern))


def _missing_shards(folder: Path, component: str) -> list[str]:
    """Shards a sharded checkpoint's index names that are not there (a partly downloaded folder)."""
    missing = []
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            missing.append(f"{component}/{index.name} is unreadable ({type(e).__name__}: {e})")
            continue
        absent = sorted(name for name in shards if not (folder / name).is_file())
        if absent:
            missing.append(f"{len(absent)} of the {len(shards)} shards {index.name} lists in {component}/: "
                           + ", ".join(absent[:4]) + (" ..." if len(absent) > 4 else ""))
    return missing


def check_model_folder(model_path: str | Path) -> Path:
    """Raise WeightsError unless `model_path` is a complete diffusers Wan 2.1 image-to-video folder; returns it."""
    if not str(model_path):
        raise WeightsError(f"generator.egox.model_path is empty: set it to a local copy of {BASE_REPO}; {BASE_HINT}")
    root = Path(model_path).expanduser()
    index = root / "model_index.json"
    if not index.is_file():
        raise WeightsError(f"{root} is not a diffusers model folder: model_index.json is missing "
                           f"(found: {describe_folder(root)}); {BASE_HINT}")
    try:
        declared = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{index} is not valid JSON ({e}); {BASE_HINT}") from e
    missing = []
    for component, alternatives_per_need in _COMPONENT_FILES.items():
        if component not in declared or declared[component] in (None, [None, None]):
            missing.append(f"{component} (not in model_index.json)")
            continue
        folder = root / component
        for alternatives in alternatives_per_need:
            if not any(_has(folder, a) for a in alternatives):
                missing.append(f"{component}/{' or '.join(alternatives)} "
                               f"(found in {component}/: {describe_folder(folder)})")
        missing += _missing_shards(folder, component)
    if missing:
        raise WeightsError(f"the model folder {root} is incomplete; missing: " + "; ".join(missing) + f". {BASE_HINT}")
    return root


@dataclass(frozen=True)
class LoraSummary:
    """What a LoRA file holds: its path, key count, rank and the blocks it covers."""
    path: Path
    keys: int
    rank: int
    blocks: int


def lora_file(lora_path: str | Path) -> Path:
    """The adapter file: `lora_path` itself, or pytorch_lora_weights.safetensors inside it if it is a folder."""
    path = Path(lora_path).expanduser()
    if path.is_dir():
        path = path / LORA_FILE
    if not path.is_file():
        found = describe_folder(path.parent)
        raise WeightsError(f"EgoX LoRA file {path} not found (found in {path.parent}: {found}); {LORA_HINT}")
    return path


def check_lora_file(lora_path: str | Path, transformer_config) -> LoraSummary:
    """Raise WeightsError unless the file is an EgoX LoRA that fits the transformer (diffusers key names, one rank,
    A (rank, in) and B (out, rank) matching each projection, blocks within the model). `transformer_config`: the
    transformer's config (num_layers, num_attention_heads, attention_head_dim)."""
    from safetensors import safe_open
    path = lora_file(lora_path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for broken files
        raise WeightsError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); {LORA_HINT}") from e
    unexpected = [k for k in shapes if not LORA_KEY.match(k)]
    if unexpected or not shapes:
        example = "transformer.blocks.0.attn1.to_q.lora_A.weight"
        raise WeightsError(f"{path} does not use the diffusers key names of the EgoX LoRA (e.g. {example}); "
                           f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
                           f"{'(no keys)' if not shapes else ''}; {LORA_HINT}")
    width = transformer_config.num_attention_heads * transformer_config.attention_head_dim
    layers = transformer_config.num_layers
    ranks, blocks, problems = set(), set(), []
    for key, shape in shapes.items():
        block, _, _, ab = LORA_KEY.match(key).groups()
        blocks.add(int(block))
        if int(block) >= layers:
            problems.append(f"{key}: the model has {layers} blocks")
            continue
        rank = shape[0] if ab == "A" else shape[1]
        ranks.add(rank)
        expected = (rank, width) if ab == "A" else (width, rank)
        if len(shape) != 2 or shape != expected:
            problems.append(f"{key} is {shape}, the model needs {expected}")
    if len(ranks) > 1:
        problems.append(f"mixed ranks {sorted(ranks)}")
    for key in shapes:   # every A needs its B
        twin = key[:-len("A.weight")] + ("B.weight" if key.endswith("A.weight") else "A.weight")
        if twin not in shapes:
            problems.append(f"{twin} is missing (its pair {key} is there)")
    if problems:
        raise WeightsError(f"the LoRA file {path} does not fit the base transformer (width {width}, {layers} blocks): "
                           + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else "")
                           + f". Is it the EgoX adapter for {BASE_REPO}? {LORA_HINT}")
    return LoraSummary(path=path, keys=len(shapes), rank=ranks.pop(), blocks=len(blocks))
