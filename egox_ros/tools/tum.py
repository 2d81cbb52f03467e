"""Reader for the two TUM RGB-D subsets in ../shared/data/tum_rgbd (real Kinect RGB-D with motion-capture poses).

Data: J. Sturm, N. Engelhard, F. Endres, W. Burgard, D. Cremers, "A Benchmark for the Evaluation of RGB-D SLAM
Systems", IROS 2012; licence CC BY 4.0.

Both layouts are read into the same `TumFrame`: rgb (480, 640, 3) uint8, depth_m (480, 640) float32 with NaN where
the sensor had no reading, world_T_camera (4, 4) float64 camera-to-world with OpenCV camera axes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.transforms import quat_to_matrix

DEPTH_UNITS_PER_M = 5000.0  # TUM depth PNG: metres = value / 5000, 0 = no reading

# Intrinsics from the data set's README: freiburg1 with OpenCV plumb_bob (k1 k2 p1 p2 k3), freiburg3 undistorted.
FR1_CAMERA = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))
FR3_CAMERA = PinholeCamera(640, 480, 535.4, 539.2, 320.1, 247.6)
SEQUENCES = ("fr1_rpy_60", "fr3_cabinet_keyframes")


@dataclass(frozen=True)
class TumFrame:
    index: int
    stamp_s: float
    rgb: np.ndarray
    depth_m: np.ndarray
    world_T_camera: np.ndarray


def tum_root() -> Path:
    """The tum_rgbd folder: $EGOX_TUM_DIR, else shared/data/tum_rgbd beside the repository."""
    candidates = [os.environ.get("EGOX_TUM_DIR", ""), str(Path(__file__).resolve().parents[3] / "shared/data/tum_rgbd")]
    for c in candidates:
        if c and (Path(c) / SEQUENCES[0]).is_dir():
            return Path(c)
    raise FileNotFoundError(f"TUM RGB-D data not found (tried {', '.join(c for c in candidates if c)}); "
                            "set EGOX_TUM_DIR")


@dataclass(frozen=True)
class Frame:
    """One associated TUM frame: the colour image's stamp and both files."""

    stamp_ns: int
    rgb_path: Path
    depth_path: Path


def _stamp_to_ns(text: str) -> int:
    """Decimal seconds string -> integer nanoseconds, exactly (no float rounding)."""
    sec, _, frac = text.partition(".")
    frac = (frac + "000000000")[:9]
    return int(sec) * 1_000_000_000 + int(frac)


def read_associations(source: Path) -> list[Frame]:
    """The frames of `source`/associations.txt (`t_rgb rgb_file t_depth depth_file`), oldest first."""
    path = source / "associations.txt"
    frames = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        t_rgb, rgb, _t_depth, depth = line.split()[:4]
        frames.append(Frame(_stamp_to_ns(t_rgb), source / rgb, source / depth))
    frames.sort(key=lambda f: f.stamp_ns)
    return frames


def read_groundtruth(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (stamps_ns int64 (N,), translations (N, 3), quaternions xyzw (N, 4))."""
    stamps, values = [], []
    for line in (source / "groundtruth.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        stamps.append(_stamp_to_ns(parts[0]))
        values.append([float(v) for v in parts[1:8]])
    order = np.argsort(np.asarray(stamps, np.int64), kind="stable")
    stamps_arr = np.asarray(stamps, np.int64)[order]
    vals = np.asarray(values, np.float64)[order]
    return stamps_arr, vals[:, :3], vals[:, 3:7]


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _pose(translation, quaternion_xyzw) -> np.ndarray:
    """(4, 4) float64 camera-to-world pose."""
    pose = np.eye(4)
    pose[:3, :3] = quat_to_matrix(np.asarray(quaternion_xyzw, dtype=np.float64))
    pose[:3, 3] = np.asarray(translation, dtype=np.float64)
    return pose


class TumSequence:
    """One of SEQUENCES; frames load lazily and are cached."""

    def __init__(self, name: str, root: Path | None = None):
        if name not in SEQUENCES:
            raise ValueError(f"unknown TUM sequence {name!r}; known: {', '.join(SEQUENCES)}")
        self.name = name
        self.root = (root or tum_root()) / name
        self.camera = FR1_CAMERA if name.startswith("fr1") else FR3_CAMERA
        if name == "fr1_rpy_60":
            stamps_ns, translations, quaternions = read_groundtruth(self.root)
            self._items = []
            for f in read_associations(self.root):
                k = int(np.argmin(np.abs(stamps_ns - f.stamp_ns)))  # nearest motion-capture sample (< 4 ms)
                self._items.append((f.stamp_ns * 1e-9, f.rgb_path, f.depth_path, _pose(translations[k], quaternions[k])))
        else:
            rgbs = [r[1] for r in _rows(self.root / "rgb.txt")]
            depths = [r[1] for r in _rows(self.root / "depth.txt")]
            poses = [[float(v) for v in p] for p in _rows(self.root / "truth_cam_poses.txt")]
            self._items = [(p[0], self.root / r, self.root / d, _pose(p[1:4], p[4:8]))
                           for r, d, p in zip(rgbs, depths, poses)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> TumFrame:
        return self._load(index)

    @lru_cache(maxsize=128)
    def _load(self, index: int) -> TumFrame:
        from PIL import Image
        stamp_s, rgb_path, depth_path, pose = self._items[index]
        rgb = np.array(Image.open(rgb_path).convert("RGB"))
        raw = np.array(Image.open(depth_path)).astype(np.float32)
        depth_m = np.where(raw > 0, raw / DEPTH_UNITS_PER_M, np.nan).astype(np.float32)
        return TumFrame(index, stamp_s, rgb, depth_m, pose)
