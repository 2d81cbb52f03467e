"""PLY files and sensor_msgs/PointCloud2 conversion of coloured point clouds."""

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField

from egox_ros.core.geometry.pointcloud_io import read_ply, write_ply
from egox_ros.core.geometry.render import PointCloud
from egox_ros.ros.pointcloud2 import cloud_to_pointcloud2, pointcloud2_to_cloud


def _random_cloud(n: int = 1000, seed: int = 0) -> PointCloud:
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn((n, 3), generator=gen) * 3.0
    colors = torch.randint(0, 256, (n, 3), generator=gen, dtype=torch.int32).to(torch.uint8)
    return PointCloud(points, colors)


def test_ply_round_trip_and_header(tmp_path):
    cloud = _random_cloud()
    path = tmp_path / "cloud.ply"
    write_ply(path, cloud)
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n")].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")
    assert "element vertex 1000\n" in header
    assert "property float x\nproperty float y\nproperty float z\n" in header
    assert "property uchar red\nproperty uchar green\nproperty uchar blue\n" in header
    assert len(raw) == len(header) + len("end_header\n") + 1000 * 15
    back = read_ply(path)
    assert torch.equal(back.points_world, cloud.points_world) and torch.equal(back.colors, cloud.colors)
    write_ply(path, PointCloud.empty())  # empty clouds too (and the file is replaced)
    assert len(read_ply(path)) == 0


def test_open3d_reads_our_ply(tmp_path):
    from egox_ros.core.io.open3d_import import import_open3d

    o3d = import_open3d()
    cloud = _random_cloud(500, seed=1)
    path = tmp_path / "cloud.ply"
    write_ply(path, cloud)
    pcd = o3d.io.read_point_cloud(str(path))
    assert pcd.has_colors()
    np.testing.assert_allclose(np.asarray(pcd.points), cloud.points_world.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.round(np.asarray(pcd.colors) * 255).astype(np.uint8), cloud.colors.numpy())


def test_read_ply_rejects_other_layouts(tmp_path):
    path = tmp_path / "x.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     b"property float z\nend_header\n0 0 0\n")
    with pytest.raises(ValueError, match="format"):
        read_ply(path)
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     b"property float z\nproperty float nx\nend_header\n" + bytes(16))
    with pytest.raises(ValueError, match="properties"):
        read_ply(path)
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     b"property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    with pytest.raises(ValueError, match="element"):
        read_ply(path)
    write_ply(path, _random_cloud(10))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(path)
    path.write_bytes(b"not a ply at all")
    with pytest.raises(ValueError, match="not a PLY"):
        read_ply(path)


def test_pointcloud2_layout_as_rviz_expects():
    cloud = PointCloud(torch.tensor([[1.0, 2.0, 3.0], [-1.5, 0.25, 8.0]]),
                       torch.tensor([[255, 0, 0], [1, 2, 3]], dtype=torch.uint8))
    msg = cloud_to_pointcloud2(cloud, "world", Time(sec=12, nanosec=34))
    assert isinstance(msg, PointCloud2)
    assert msg.header.frame_id == "world" and msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 34
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 16, 32)
    assert msg.is_dense and not msg.is_bigendian
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1)]
    raw = np.frombuffer(bytes(msg.data), dtype="<u4").reshape(2, 4)
    assert raw[0, 3] == 0x00FF0000 and raw[1, 3] == 0x00010203  # packed 0x00RRGGBB bits in the float32 slot
    np.testing.assert_array_equal(raw[:, :3].view("<f4"), cloud.points_world.numpy())


def test_pointcloud2_round_trip_and_other_layouts():
    cloud = _random_cloud(2000, seed=2)
    back = pointcloud2_to_cloud(cloud_to_pointcloud2(cloud, "map", Time()))
    assert torch.equal(back.points_world, cloud.points_world) and torch.equal(back.colors, cloud.colors)
    assert len(pointcloud2_to_cloud(cloud_to_pointcloud2(PointCloud.empty(), "map", Time()))) == 0
    # A foreign layout: big-endian float64 coordinates, uint32 rgba, padding, two padded rows, one NaN point.
    n = 3
    dtype = np.dtype({"names": ["rgba", "x", "y", "z"], "formats": [">u4", ">f8", ">f8", ">f8"],
                      "offsets": [0, 8, 16, 24], "itemsize": 40})
    pts = np.zeros(2 * n, dtype)
    pts["x"], pts["y"], pts["z"] = np.arange(6.0), np.arange(6.0) * 2, np.arange(6.0) * 3
    pts["x"][4] = np.nan
    pts["rgba"] = 0xFF102030
    rows = b"".join(pts[r * n: (r + 1) * n].tobytes() + b"\0" * 8 for r in range(2))
    msg = PointCloud2(height=2, width=n, is_bigendian=True, point_step=40, row_step=40 * n + 8, is_dense=False)
    msg.fields = [PointField(name="rgba", offset=0, datatype=PointField.UINT32, count=1)] + [
        PointField(name=c, offset=8 * (i + 1), datatype=PointField.FLOAT64, count=1) for i, c in enumerate("xyz")]
    msg.data = rows
    got = pointcloud2_to_cloud(msg)
    assert len(got) == 5
    np.testing.assert_allclose(got.points_world[:, 0].numpy(), [0, 1, 2, 3, 5])
    assert (got.colors == torch.tensor([0x10, 0x20, 0x30], dtype=torch.uint8)).all()
    msg.fields = msg.fields[:2]
    with pytest.raises(ValueError, match="'y'"):
        pointcloud2_to_cloud(msg)
