"""``PointCloud`` <-> ``sensor_msgs/PointCloud2`` (vectorised with numpy structured arrays).

Layout written: ``height`` 1, ``width`` N, little-endian, 16 bytes per point: ``x`` ``y`` ``z`` FLOAT32 at 0, 4,
8 (metres in ``frame_id``) and ``rgb`` FLOAT32 at 12 holding the packed ``0x00RRGGBB`` uint32 bit pattern, as RViz
and PCL expect.
"""
from __future__ import annotations

import numpy as np
import torch
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField

from egox_ros.core.geometry.render import PointCloud

_POINT_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                         "offsets": [0, 4, 8, 12], "itemsize": 16})
_FIELD_DTYPES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                 PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}


def cloud_to_pointcloud2(cloud: PointCloud, frame_id: str, stamp: Time) -> PointCloud2:
    """The cloud (any device) as a PointCloud2 in ``frame_id`` (points are taken as already in that frame).
    ``is_dense`` is True when every coordinate is finite."""
    n = len(cloud)
    points = cloud.points_world.detach().to("cpu", torch.float32).numpy()
    colors = cloud.colors.detach().cpu().numpy().astype(np.uint32)
    data = np.empty(n, dtype=_POINT_DTYPE)
    data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
    data["rgb"] = (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]
    msg = PointCloud2(height=1, width=n, is_bigendian=False, point_step=16, row_step=16 * n,
                      is_dense=bool(np.isfinite(points).all()))
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp
    msg.fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, name in enumerate(("x", "y", "z", "rgb"))]
    msg.data = data.tobytes()
    return msg


def pointcloud2_to_cloud(msg: PointCloud2, device: torch.device | str = "cpu") -> PointCloud:
    """Points (x, y, z) and colours of a PointCloud2 with any point layout that has FLOAT32/FLOAT64 ``x y z``
    and a packed ``rgb`` or ``rgba`` field (FLOAT32 or UINT32 bits, ``0x00RRGGBB``); without one, colours are 0.
    Points with a non-finite coordinate are dropped.  Raises ValueError for missing fields or a short buffer."""
    fields = {f.name: f for f in msg.fields}
    endian = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for name in ("x", "y", "z"):
        f = fields.get(name)
        if f is None or f.datatype not in (PointField.FLOAT32, PointField.FLOAT64):
            raise ValueError(f"PointCloud2 needs a FLOAT32/FLOAT64 field {name!r}; fields: {list(fields)}")
        names.append(name), formats.append(endian + _FIELD_DTYPES[f.datatype]), offsets.append(f.offset)
    color = fields.get("rgb") or fields.get("rgba")
    if color is not None:
        if color.datatype not in (PointField.FLOAT32, PointField.UINT32, PointField.INT32):
            raise ValueError(f"PointCloud2 colour field {color.name!r} must be 32-bit, got datatype {color.datatype}")
        names.append("rgb"), formats.append(endian + "u4"), offsets.append(color.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    h, w = int(msg.height), int(msg.width)
    if msg.row_step < w * msg.point_step or len(msg.data) < (h - 1) * msg.row_step + w * msg.point_step:
        raise ValueError(f"PointCloud2 data too short: {len(msg.data)} bytes for {h}x{w} points of "
                         f"{msg.point_step} bytes (row_step {msg.row_step})")
    if msg.row_step == w * msg.point_step:
        data = np.frombuffer(msg.data, dtype=dtype, count=h * w)
    else:  # padded rows: one view per row (a loop over rows, not points)
        data = np.concatenate([np.frombuffer(msg.data, dtype=dtype, count=w, offset=r * msg.row_step)
                               for r in range(h)]) if h else np.empty(0, dtype)
    points = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    if color is not None:
        packed = data["rgb"].astype(np.uint32)
        colors = np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)
    else:
        colors = np.zeros((len(data), 3), np.uint8)
    keep = np.isfinite(points).all(axis=1)
    if not keep.all():
        points, colors = points[keep], colors[keep]
    return PointCloud(torch.from_numpy(np.ascontiguousarray(points)).to(device),
                      torch.from_numpy(np.ascontiguousarray(colors)).to(device))
