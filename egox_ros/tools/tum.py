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

from egox_ros.core.camera import PinholeCamera

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


def quat_xyzw_to_matrix(q) -> np.ndarray:
    """(3, 3) rotation matrix of a quaternion (x, y, z, w); normalised first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _pose(row) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = quat_xyzw_to_matrix([float(v) for v in row[3:7]])
    pose[:3, 3] = [float(v) for v in row[0:3]]
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
            gt = np.array(_rows(self.root / "groundtruth.txt"), dtype=np.float64)
            self._items = []
            for t_rgb, rgb, _, depth in _rows(self.root / "associations.txt"):
                row = gt[np.argmin(np.abs(gt[:, 0] - float(t_rgb)))]  # nearest motion-capture sample (< 4 ms)
                self._items.append((float(t_rgb), rgb, depth, _pose(row[1:])))
        else:
            rgbs = [r[1] for r in _rows(self.root / "rgb.txt")]
            depths = [r[1] for r in _rows(self.root / "depth.txt")]
            poses = _rows(self.root / "truth_cam_poses.txt")
            self._items = [(float(p[0]), r, d, _pose(p[1:])) for r, d, p in zip(rgbs, depths, poses)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> TumFrame:
        return self._load(index)

    @lru_cache(maxsize=128)
    def _load(self, index: int) -> TumFrame:
        from PIL import Image
        stamp_s, rgb_file, depth_file, pose = self._items[index]
        rgb = np.array(Image.open(self.root / rgb_file).convert("RGB"))
        raw = np.array(Image.open(self.root / depth_file)).astype(np.float32)
        depth_m = np.where(raw > 0, raw / DEPTH_UNITS_PER_M, np.nan).astype(np.float32)
        return TumFrame(index, stamp_s, rgb, depth_m, pose)
