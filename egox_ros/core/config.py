"""Typed configuration of the core components.

Each component has one dataclass. Field metadata (``help``, ``range``, ``choices``) describes the ROS parameter the
node declares for it (``<section>.<field>``), so the parameters, their descriptors and ``config/egox.yaml`` stay in
step with the code. Construct them directly in Python; the node builds them from its parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def param(default: Any, help: str, range: tuple[float, float] | None = None,
          choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with the metadata of the ROS parameter that sets it."""
    meta = {"help": help, "range": range, "choices": choices}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def validate(config: Any) -> None:
    """Check every field against its declared range / choices; raises ValueError naming the field."""
    for f in fields(config):
        value = getattr(config, f.name)
        lo_hi = f.metadata.get("range")
        if lo_hi is not None:
            items = value if isinstance(value, (list, tuple)) else [value]
            for v in items:
                if not (lo_hi[0] <= v <= lo_hi[1]):
                    raise ValueError(f"{type(config).__name__}.{f.name} = {value!r} is outside [{lo_hi[0]}, {lo_hi[1]}]")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{type(config).__name__}.{f.name} = {value!r}; expected one of {list(choices)}")


EGO_CAMERA_MODELS = ("pinhole", "equidistant")


@dataclass
class EgoCameraConfig:
    """Camera model and intrinsics of the generated ego view (OpenCV optical axes), pixels."""
    width: int = param(448, "ego image width [px]; the released EgoX weights expect 448", (16, 4096))
    height: int = param(448, "ego image height [px]; the released EgoX weights expect 448", (16, 4096))
    fx: float = param(224.0, "ego focal length x [px] (224 px at 448 px width = 90 degrees field of view)", (1.0, 1e5))
    fy: float = param(224.0, "ego focal length y [px]", (1.0, 1e5))
    cx: float = param(223.5, "ego principal point x [px]", (-1e4, 1e4))
    cy: float = param(223.5, "ego principal point y [px]", (-1e4, 1e4))
    model: str = param("pinhole", "ego camera model: 'pinhole' (OpenCV plumb_bob / rational_polynomial distortion) "
                       "or 'equidistant' (Kannala-Brandt fisheye, as OpenCV fisheye)",
                       choices=EGO_CAMERA_MODELS)
    distortion: list = param([0.0, 0.0, 0.0, 0.0], "distortion coefficients, all zeros = none; pinhole: 4 or 5 "
                             "(k1 k2 p1 p2 [k3], plumb_bob) or 8 (k1 k2 p1 p2 k3 k4 k5 k6, rational_polynomial); "
                             "equidistant: 4 (k1 k2 k3 k4)", (-1e3, 1e3))

    def __post_init__(self) -> None:
        self.distortion = [float(c) for c in self.distortion]
        validate(self)
        counts = {"pinhole": (0, 4, 5, 8), "equidistant": (0, 4)}[self.model]
        if len(self.distortion) not in counts:
            raise ValueError(f"EgoCameraConfig.distortion has {len(self.distortion)} coefficients; the "
                             f"{self.model!r} model takes {', '.join(map(str, counts))}")


@dataclass
class WindowConfig:
    """Rolling window of synchronised exo frames."""
    max_frames: int = param(30, "frames kept in the rolling window", (1, 10000))
    max_age_s: float = param(2.0, "frames older than this (relative to the newest stamp) leave the window [s]",
                             (0.0, 3600.0))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class PriorConfig:
    """Ego prior rendering: the fused window cloud (see FusionConfig) splatted into the ego camera."""
    point_radius_px: int = param(1, "splat radius of each point in the ego image [px] (0 = one pixel)", (0, 16))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class GeneratorConfig:
    """Which generator turns priors into ego images, and its shared settings."""
    name: str = param("prior", "generator: 'prior' (the ego image is the prior)", choices=("prior",))
    device: str = param("cpu", "torch device for rendering and generation ('cpu', 'cuda', 'cuda:1', ...)")

    def __post_init__(self) -> None:
        validate(self)
