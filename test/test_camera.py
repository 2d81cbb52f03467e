"""PinholeCamera: validation, CameraInfo parsing, resizing, projection and distortion round trips."""

import math

import numpy as np
import pytest
import torch

from egox_ros.core.camera import PinholeCamera

# TUM RGB-D freiburg1 Kinect (see shared/data/tum_rgbd/README.md), OpenCV order k1 k2 p1 p2 k3.
FR1_D = (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)
FR1 = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, FR1_D)
FR1_UNDISTORTED = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3)


def _reference_project(cam: PinholeCamera, pts: np.ndarray) -> np.ndarray:
    """Independent float64 plumb_bob projection written straight from the OpenCV formula."""
    k1, k2, p1, p2, k3 = (list(cam.distortion) + [0.0] * 5)[:5]
    x = pts[:, 0] / pts[:, 2]
    y = pts[:, 1] / pts[:, 2]
    r2 = x**2 + y**2
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x**2)
    yd = y * radial + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y
    return np.stack([cam.fx * xd + cam.cx, cam.fy * yd + cam.cy], axis=1)


def _whole_image_uv(cam: PinholeCamera) -> torch.Tensor:
    """Every pixel centre plus the outer image corners (the worst case for undistortion)."""
    grid = cam.pixel_grid().reshape(-1, 2)
    corners = torch.tensor(
        [[-0.5, -0.5], [cam.width - 0.5, -0.5], [-0.5, cam.height - 0.5], [cam.width - 0.5, cam.height - 0.5]]
    )
    return torch.cat([grid, corners])


def test_roundtrip_with_fr1_distortion_over_whole_image():
    uv = _whole_image_uv(FR1)
    depth = torch.linspace(0.3, 8.0, uv.shape[0])
    pts = FR1.unproject(uv, depth)
    assert pts.dtype == torch.float32 and pts.shape == (uv.shape[0], 3)
    assert torch.allclose(pts[:, 2], depth)
    uv2, valid = FR1.project(pts)
    assert valid.all()
    err = (uv2 - uv).norm(dim=-1)
    assert err.max().item() < 1e-3, f"worst round-trip error {err.max().item():.2e} px"


def test_distortion_matches_reference_formula():
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-1.2, 1.2, 500), rng.uniform(-0.9, 0.9, 500), rng.uniform(0.5, 4, 500)], axis=1)
    pts[:, :2] *= pts[:, 2:3] * 0.5  # keep inside the field of view
    uv, valid = FR1.project(torch.from_numpy(pts))
    assert valid.all() and uv.dtype == torch.float32
    np.testing.assert_allclose(uv.numpy(), _reference_project(FR1, pts), atol=2e-3)
    # The distortion is strong: at the image edge the pinhole pixel is several pixels away.
    uv_pinhole, _ = FR1_UNDISTORTED.project(torch.from_numpy(pts))
    assert (uv - uv_pinhole).norm(dim=-1).max() > 5.0


def test_undistorted_projection_is_exact():
    cam = PinholeCamera(64, 48, 100.0, 80.0, 31.5, 23.5)
    uv, valid = cam.project(torch.tensor([[0.2, -0.1, 2.0], [0.0, 0.0, 1.0]]))
    assert valid.all()
    assert torch.equal(uv, torch.tensor([[41.5, 19.5], [31.5, 23.5]]))
    uv_all = _whole_image_uv(FR1_UNDISTORTED)
    depth = torch.full(uv_all.shape[:1], 2.5)
    uv2, _ = FR1_UNDISTORTED.project(FR1_UNDISTORTED.unproject(uv_all, depth))
    assert (uv2 - uv_all).abs().max().item() < 1e-4  # float32 rounding only


def test_all_zero_distortion_means_none():
    cam = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, (0.0,) * 5)
    assert not cam.has_distortion
    pts = torch.tensor([[0.3, 0.2, 1.0]])
    assert torch.equal(cam.project(pts)[0], FR1_UNDISTORTED.project(pts)[0])


def test_points_behind_camera_are_invalid():
    uv, valid = FR1.project(torch.tensor([[0.0, 0.0, 1.0], [0.1, 0.0, 0.0], [0.1, 0.0, -2.0], [0.0, 0.0, 1e-9]]))
    assert valid.tolist() == [True, False, False, False]
    assert torch.isfinite(uv).all()


def test_points_where_distortion_folds_over_are_invalid():
    # fr1 without k3: r (1 + k1 r^2 + k2 r^4) turns at r^2 = 0.548, so points further out would fold back in.
    cam = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, FR1_D[:4])
    assert cam.max_valid_radius2 == pytest.approx(0.548, abs=1e-3)
    assert FR1.max_valid_radius2 == math.inf and FR1_UNDISTORTED.max_valid_radius2 == math.inf
    _, valid = cam.project(torch.tensor([[0.7, 0.0, 1.0], [0.75, 0.0, 1.0], [3.0, 0.0, 1.0]]))
    assert valid.tolist() == [True, False, False]
    assert FR1.project(torch.tensor([[3.0, 0.0, 1.0]]))[1].item()


def test_project_keeps_batch_shape_and_device():
    pts = torch.rand(2, 5, 7, 3, dtype=torch.float64) * torch.tensor([0.8, 0.6, 1.0], dtype=torch.float64)
    pts = pts - torch.tensor([0.4, 0.3, -1.0], dtype=torch.float64)  # inside the field of view
    uv, valid = FR1.project(pts)
    assert uv.shape == (2, 5, 7, 2) and valid.shape == (2, 5, 7) and uv.dtype == torch.float32
    back = FR1.unproject(uv, pts[..., 2])
    assert back.shape == (2, 5, 7, 3)
    assert torch.allclose(back, pts.float(), atol=1e-4)


def test_pixel_grid():
    grid = FR1.pixel_grid()
    assert grid.shape == (480, 640, 2) and grid.dtype == torch.float32
    assert grid[0, 0].tolist() == [0.0, 0.0]
    assert grid[479, 639].tolist() == [639.0, 479.0]
    assert grid[10, 20].tolist() == [20.0, 10.0]  # (u, v) order
    strided = FR1.pixel_grid(stride=3)
    assert strided.shape == (160, 214, 2)
    assert strided[1, 2].tolist() == [6.0, 3.0]
    with pytest.raises(ValueError, match="stride"):
        FR1.pixel_grid(0)


def test_ray_grid_matches_unproject_and_is_cached():
    rays = FR1.ray_grid(stride=2)
    assert rays.shape == (240, 320, 3)
    expected = FR1.unproject(FR1.pixel_grid(2), torch.ones(240, 320))
    assert torch.equal(rays, expected)
    assert FR1.ray_grid(stride=2) is rays


def test_k_matrix():
    k = FR1.K
    assert k.dtype == np.float64
    np.testing.assert_array_equal(k, [[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]])


def test_from_camera_info_parses_k_and_d():
    k = [517.3, 0.0, 318.6, 0.0, 516.5, 255.3, 0.0, 0.0, 1.0]
    cam = PinholeCamera.from_camera_info(640, 480, k, list(FR1_D), "plumb_bob")
    assert cam == FR1
    assert isinstance(cam.distortion, tuple)
    none = PinholeCamera.from_camera_info(640, 480, np.array(k), [], "")
    assert none == FR1_UNDISTORTED
    assert PinholeCamera.from_camera_info(640, 480, k, [0.0] * 5, "none") == FR1_UNDISTORTED


@pytest.mark.parametrize("model", ["equidistant", "rational_polynomial", "fisheye"])
def test_from_camera_info_rejects_unknown_models(model):
    k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError) as info:
        PinholeCamera.from_camera_info(640, 480, k, [0.1] * 8, model)
    message = str(info.value)
    assert model in message and "plumb_bob" in message


def test_from_camera_info_rejects_bad_k():
    with pytest.raises(ValueError, match="9 values"):
        PinholeCamera.from_camera_info(640, 480, [500.0, 0.0, 320.0], [], "plumb_bob")
    with pytest.raises(ValueError, match="K must be"):
        PinholeCamera.from_camera_info(640, 480, [500, 3, 320, 0, 500, 240, 0, 0, 1], [], "plumb_bob")
    with pytest.raises(ValueError, match="no coefficients"):
        PinholeCamera.from_camera_info(640, 480, [500, 0, 320, 0, 500, 240, 0, 0, 1], [0.1, 0, 0, 0, 0], "none")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=0), "width"),
        (dict(height=-4), "height"),
        (dict(width=64.5), "width"),
        (dict(fx=0.0), "focal"),
        (dict(fy=-1.0), "focal"),
        (dict(cx=math.nan), "cx"),
        (dict(fx=math.inf), "fx"),
        (dict(distortion=(0.1, 0.2, 0.3)), "0, 4"),
        (dict(distortion=(0.1, math.nan, 0.0, 0.0)), "finite"),
    ],
)
def test_validation(kwargs, match):
    args = dict(width=64, height=48, fx=50.0, fy=50.0, cx=31.5, cy=23.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PinholeCamera(**args)


def test_four_coefficients_accepted():
    cam = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, (-0.2, 0.05, 0.001, -0.002))
    assert cam.distortion == (-0.2, 0.05, 0.001, -0.002)
    uv = _whole_image_uv(cam)
    uv2, _ = cam.project(cam.unproject(uv, torch.ones(uv.shape[0])))
    assert (uv2 - uv).norm(dim=-1).max() < 1e-3


def test_with_size_scales_intrinsics():
    half = FR1.with_size(320, 240)
    assert (half.width, half.height) == (320, 240)
    assert half.fx == pytest.approx(517.3 / 2) and half.fy == pytest.approx(516.5 / 2)
    assert half.cx == pytest.approx((318.6 + 0.5) / 2 - 0.5)
    assert half.cy == pytest.approx((255.3 + 0.5) / 2 - 0.5)
    assert half.distortion == FR1.distortion
    # The image edges map onto each other: pixel u in the original is at (u + 0.5) * s - 0.5 after resizing.
    pts = FR1.unproject(_whole_image_uv(FR1), torch.full((640 * 480 + 4,), 2.0))
    uv, _ = FR1.project(pts)
    uv_half, _ = half.project(pts)
    assert torch.allclose(uv_half, (uv + 0.5) * 0.5 - 0.5, atol=1e-3)
    # Non-uniform scaling (e.g. 640x480 -> 448x448).
    sq = FR1_UNDISTORTED.with_size(448, 448)
    assert sq.fx == pytest.approx(517.3 * 0.7) and sq.fy == pytest.approx(516.5 * 448 / 480)
    with pytest.raises(ValueError):
        FR1.with_size(0, 10)
