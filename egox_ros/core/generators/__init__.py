"""Generators behind one small interface (base.py); `make_generator` picks one by name; pool.py runs them on
threads or Ray actors (ray_runtime.py starts Ray). Imports every part of the core below the runtime."""
from __future__ import annotations

from egox_ros.core.config import EgoxConfig, GeneratorConfig
from egox_ros.core.generators.base import ClipRequest, ClipResult, EgoGenerator, Prior
from egox_ros.core.generators.prior import PriorGenerator

GENERATOR_NAMES = ("prior", "egox")


def make_generator(config: GeneratorConfig, egox: EgoxConfig | None = None) -> EgoGenerator:
    """Build the generator named in the config; unknown names raise ValueError listing the known ones.
    'egox' raises egox_ros.core.egox.weights.WeightsError when its weight files are missing (checked, not loaded)."""
    if config.name == "prior":
        return PriorGenerator(config.prior_clip_frames)
    if config.name == "egox":
        from egox_ros.core.generators.egox import EgoxGenerator   # imports diffusers only when asked for
        return EgoxGenerator(egox or EgoxConfig(), config.device)
    raise ValueError(f"unknown generator {config.name!r}; known: {list(GENERATOR_NAMES)}")


__all__ = ["ClipRequest", "ClipResult", "EgoGenerator", "Prior", "PriorGenerator", "GENERATOR_NAMES",
           "make_generator"]
