"""PLY files of coloured point clouds.

``write_ply`` writes binary little-endian PLY with one ``vertex`` element of ``x y z`` float32 (metres, world
frame) and ``red green blue`` uchar, which open3d, MeshLab and CloudCompare read.  ``read_ply`` reads exactly that
layout back (the files ``write_ply`` writes); other PLY variants raise ``ValueError`` saying what differs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from egox_ros.core.geometry.render import PointCloud

_VERTEX_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
_PROPERTIES = [("float", "x"), ("float", "y"), ("float", "z"),
               ("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
_TYPE_ALIASES = {"float32": "float", "uint8": "uchar"}
_MAX_HEADER_BYTES = 1 << 16


def write_ply(path: str | os.PathLike, cloud: PointCloud) -> None:
    """Write ``cloud`` (any device) to ``path`` as binary little-endian PLY; replaces the file atomically."""
    n = len(cloud)
    data = np.empty(n, dtype=_VERTEX_DTYPE)
    points = cloud.points_world.detach().to("cpu", torch.float32).numpy()
    colors = cloud.colors.detach().cpu().numpy()
    data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
    data["red"], data["green"], data["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = ["ply", "format binary_little_endian 1.0", "comment written by egox_ros", f"element vertex {n}"]
    header += [f"property {t} {name}" for t, name in _PROPERTIES] + ["end_header"]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    os.replace(tmp, path)


def read_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> PointCloud:
    """Read a PLY written by :func:`write_ply`: binary little-endian, one ``vertex`` element with exactly
    ``x y z`` float32 and ``red green blue`` uchar.  Raises ValueError for any other layout or a short file."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n", 0, _MAX_HEADER_BYTES)
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    lines = [ln.strip() for ln in raw[:end].decode("ascii", errors="replace").splitlines()[1:]]
    lines = [ln for ln in lines if ln and not ln.startswith(("comment", "obj_info"))]
    if not lines or lines[0] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: unsupported PLY format {lines[0] if lines else '(none)'!r}; "
                         "only 'binary_little_endian 1.0' is read")
    elements = [ln for ln in lines[1:] if ln.startswith("element")]
    if len(elements) != 1 or len(elements[0].split()) != 3 or elements[0].split()[1] != "vertex":
        raise ValueError(f"{path}: expected exactly one 'element vertex N', got {elements}")
    try:
        n = int(elements[0].split()[2])
    except ValueError:
        raise ValueError(f"{path}: bad vertex count in {elements[0]!r}") from None
    props = []
    for ln in lines[2:]:
        parts = ln.split()
        if parts[0] != "property" or len(parts) != 3:
            raise ValueError(f"{path}: unsupported header line {ln!r} (lists or extra elements are not read)")
        props.append((_TYPE_ALIASES.get(parts[1], parts[1]), parts[2]))
    if props != _PROPERTIES:
        raise ValueError(f"{path}: vertex properties {props} differ from the supported "
                         f"x y z float + red green blue uchar")
    body = raw[end + len(b"end_header\n"):]
    if n < 0 or len(body) < n * _VERTEX_DTYPE.itemsize:
        raise ValueError(f"{path}: truncated: {len(body)} data bytes for {n} vertices")
    data = np.frombuffer(body, dtype=_VERTEX_DTYPE, count=n)
    points = np.stack([data["x"], data["y"], data["z"]], axis=1)
    colors = np.stack([data["red"], data["green"], data["blue"]], axis=1)
    return PointCloud(torch.from_numpy(points).to(device), torch.from_numpy(colors).to(device))
