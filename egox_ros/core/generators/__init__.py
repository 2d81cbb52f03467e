"""Generators behind one small interface; `make_generator` picks one by name."""
from __future__ import annotations

from egox_ros.core.config import GeneratorConfig
from egox_ros.core.generators.base import ClipRequest, ClipResult, EgoGenerator, Prior
from egox_ros.core.generators.prior import PriorGenerator

GENERATORS: dict[str, type[EgoGenerator]] = {PriorGenerator.name: PriorGenerator}


def make_generator(config: GeneratorConfig) -> EgoGenerator:
    """Build the generator named in the config; unknown names raise ValueError listing the known ones."""
    try:
        cls = GENERATORS[config.name]
    except KeyError:
        raise ValueError(f"unknown generator {config.name!r}; known: {sorted(GENERATORS)}") from None
    return cls()


__all__ = ["ClipRequest", "ClipResult", "EgoGenerator", "Prior", "PriorGenerator", "GENERATORS", "make_generator"]
