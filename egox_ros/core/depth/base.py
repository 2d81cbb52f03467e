"""The depth-source interface: exo images in, one depth map per image out, each saying what kind of depth it is.

Kinds (what the alignment in egox_ros.core.geometry.depth_alignment needs to know):
- ``metric``: metres along the optical axis (z), NaN where there is no estimate;
- ``relative_inverse``: inverse depth known only up to an unknown affine map (larger = nearer; e.g. disparity),
  NaN or <= 0 where there is no estimate. It becomes metric only by alignment to a metric source.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

DepthKind = Literal["metric", "relative_inverse"]
DEPTH_KINDS: tuple[str, ...] = ("metric", "relative_inverse")


@dataclass
class DepthMap:
    """One frame's depth: values (H, W) float32 at the exo image's resolution, in the unit its kind says."""
    values: np.ndarray
    kind: DepthKind

    def __post_init__(self) -> None:
        if self.kind not in DEPTH_KINDS:
            raise ValueError(f"depth kind must be one of {DEPTH_KINDS}, got {self.kind!r}")
        if self.values.ndim != 2:
            raise ValueError(f"a depth map is (H, W), got shape {self.values.shape}")


class DepthSource(ABC):
    """Estimates depth for exo images. Implementations: egox_ros.core.depth.hf_model (a transformers
    depth-estimation checkpoint, per frame) and egox_ros.core.depth.temporal (a temporally stable relative source);
    the `topic` source (a registered depth image) lives in the node, since it only converts messages."""

    name: str = ""

    @property
    @abstractmethod
    def kind(self) -> DepthKind:
        """What `estimate` returns: 'metric' or 'relative_inverse'."""

    @abstractmethod
    def estimate(self, images: list[np.ndarray]) -> list[DepthMap]:
        """One DepthMap per image, same order and size. images: (H, W, 3) uint8 RGB, in stamp order (temporal
        sources keep state across calls: pass each frame once, oldest first). Batched where the model allows."""

    def reset(self) -> None:
        """Forget temporal state (the stream jumped back in time or restarted)."""
