"""Camera models (pinhole plumb_bob / rational_polynomial, Kannala-Brandt fisheye): validation, CameraInfo
parsing, resizing, projection, hand-computed values and round trips, rendering into a fisheye camera."""

import math

import numpy as np
import pytest
import torch

from egox_ros.core.geometry.cameras import CameraModel, FisheyeCamera, PinholeCamera, camera_from_camera_info

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


@pytest.mark.parametrize("model", ["fisheye", "kannala_brandt", "plumb-bob"])
def test_from_camera_info_rejects_unknown_models(model):
    k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    for build in (PinholeCamera.from_camera_info, camera_from_camera_info):
        with pytest.raises(ValueError) as info:
            build(640, 480, k, [0.1] * 4, model)
        message = str(info.value)
        assert model in message and "plumb_bob" in message and "equidistant" in message


def test_pinhole_from_camera_info_refuses_fisheye():
    k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="camera_from_camera_info"):
        PinholeCamera.from_camera_info(640, 480, k, [0.1] * 4, "equidistant")
    assert isinstance(FisheyeCamera.from_camera_info(640, 480, k, [0.1] * 4, "equidistant"), FisheyeCamera)


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


# ---------------------------------------------------------------------------------------------- rational_polynomial

# A wide-angle lens in OpenCV's rational form (k1 k2 p1 p2 k3 k4 k5 k6), invertible over the whole image.
RATIONAL_D = (0.8, 0.2, 1e-3, -5e-4, 0.01, 1.1, 0.4, 0.03)
RATIONAL = PinholeCamera(640, 480, 420.0, 420.0, 319.5, 239.5, RATIONAL_D)
BARREL_RATIONAL = PinholeCamera(640, 480, 420.0, 420.0, 319.5, 239.5, (-0.3, 0.08, 1e-3, -5e-4, 0.0, 0.1, 0.02, 0.0))


def test_rational_known_values():
    # fx = fy = 100, cx = 50, cy = 40.  Point (0.5, 0, 1), k1 = 0.1, k2 = 0.01, k4 = 0.2, the rest 0:
    # r^2 = 0.25, R = (1 + 0.025 + 0.000625) / (1 + 0.05) = 0.976786, u = 50 + 100 * 0.5 * R = 98.839286.
    cam = PinholeCamera(100, 80, 100.0, 100.0, 50.0, 40.0, (0.1, 0.01, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0))
    assert cam.is_rational and cam.camera_info_distortion[0] == "rational_polynomial"
    uv, valid = cam.project(torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.0, 2.0]]))
    assert valid.all()
    np.testing.assert_allclose(uv.numpy(), [[98.839286, 40.0], [98.839286, 40.0]], atol=1e-4)
    # With tangential terms p1 = 0.01, p2 = -0.02 at (0.2, 0.1, 1): r^2 = 0.05, R = 1.005025 / 1.01 = 0.9950743;
    # x_d = 0.2 R + 2 p1 (0.02) + p2 (0.05 + 0.08) = 0.1968149;
    # y_d = 0.1 R + p1 (0.05 + 0.02) + 2 p2 (0.02) = 0.0994074.
    cam = PinholeCamera(100, 80, 100.0, 100.0, 50.0, 40.0, (0.1, 0.01, 0.01, -0.02, 0.0, 0.2, 0.0, 0.0))
    uv, _ = cam.project(torch.tensor([[0.2, 0.1, 1.0]]))
    np.testing.assert_allclose(uv.numpy(), [[69.681485, 49.940743]], atol=1e-4)


def test_rational_with_zero_denominator_terms_equals_plumb_bob():
    d8 = FR1_D[:5] + (0.0, 0.0, 0.0)
    cam = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, d8)
    pts = torch.rand(1000, 3) * torch.tensor([1.0, 0.8, 2.0]) + torch.tensor([-0.5, -0.4, 1.0])
    assert torch.allclose(cam.project(pts)[0], FR1.project(pts)[0], atol=1e-4)


@pytest.mark.parametrize("cam", [RATIONAL, BARREL_RATIONAL], ids=["pincushion", "barrel"])
def test_rational_roundtrip_over_whole_image(cam):
    uv = _whole_image_uv(cam)
    depth = torch.linspace(0.3, 8.0, uv.shape[0])
    pts = cam.unproject(uv, depth)
    assert pts.dtype == torch.float32 and torch.allclose(pts[:, 2], depth)
    uv2, valid = cam.project(pts)
    assert valid.all()
    err = (uv2 - uv).norm(dim=-1)
    assert err.max().item() < 1e-3, f"worst round-trip error {err.max().item():.2e} px"
    # The distortion is far from negligible.
    assert (uv2 - PinholeCamera(640, 480, 420.0, 420.0, 319.5, 239.5).project(pts)[0]).norm(dim=-1).max() > 5.0


def test_rational_pole_limits_the_valid_radius():
    # k4 = -1: R = 1 / (1 - r^2) grows without bound at r^2 = 1, so only r^2 < 1 is invertible.
    cam = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5, (0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0))
    assert cam.max_valid_radius2 == pytest.approx(1.0)
    uv, valid = cam.project(torch.tensor([[0.9, 0.0, 1.0], [1.1, 0.0, 1.0], [1.0, 0.0, 1.0]]))
    assert valid.tolist() == [True, False, False] and torch.isfinite(uv).all()
    assert RATIONAL.max_valid_radius2 == math.inf


# ---------------------------------------------------------------------------------------------- fisheye

# T265-like fisheye (848x800, Kannala-Brandt k1..k4).
T265 = FisheyeCamera(848, 800, 286.0, 286.0, 423.5, 399.5, (-0.0057, 0.0421, -0.0392, 0.0073))
STRONG_FISHEYE = FisheyeCamera(640, 480, 200.0, 200.0, 319.5, 239.5, (-0.08, 0.012, -0.001, 0.0))
EQUIDISTANT = FisheyeCamera(640, 480, 200.0, 190.0, 319.5, 239.5)


def test_fisheye_known_values():
    cam = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0, (0.1, 0.0, 0.0, 0.0))
    # 45 degrees off-axis along +x: theta = pi/4, theta_d = theta (1 + 0.1 theta^2) = 0.833845, u = 320 + 100 theta_d.
    uv, valid = cam.project(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 5.0]]))
    assert valid.all()
    np.testing.assert_allclose(uv.numpy(), [[403.384547, 240.0], [320.0, 240.0]], atol=1e-4)
    # All four coefficients, along +y: theta = atan(0.5) = 0.463648, theta^2 = 0.214969,
    # theta_d = theta (1 + 0.1 t2 - 0.02 t2^2 + 0.003 t2^3 - 0.0004 t2^4) = 0.473200, v = 240 + 100 theta_d.
    cam = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0, (0.1, -0.02, 0.003, -0.0004))
    uv, _ = cam.project(torch.tensor([[0.0, 1.5, 3.0]]))
    np.testing.assert_allclose(uv.numpy(), [[320.0, 287.319950]], atol=1e-4)
    # Pure equidistant: image radius = f * theta.  (0, -2, 2) is 45 degrees up: v = 240 - 100 pi / 4.
    cam = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0)
    uv, _ = cam.project(torch.tensor([[0.0, -2.0, 2.0]]))
    np.testing.assert_allclose(uv.numpy(), [[320.0, 161.460184]], atol=1e-4)


def test_fisheye_beyond_90_degrees():
    pts = torch.tensor([
        [math.sin(math.radians(120)), 0.0, math.cos(math.radians(120))],  # 120 deg off-axis, behind the image plane
        [1.0, 0.0, 0.0],  # exactly 90 deg (z = 0)
        [0.0, 0.0, -1.0],  # straight behind: direction undefined
        [0.0, 0.0, 0.0],  # camera centre
        [0.3, 0.2, 1.0],
    ])
    # Default field of view 180 deg: only points with z > 0, as for the pinhole camera.
    cam = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0)
    assert cam.max_theta == pytest.approx(math.pi / 2)
    uv, valid = cam.project(pts)
    assert valid.tolist() == [False, False, False, False, True] and torch.isfinite(uv).all()
    # A 270 deg lens sees 120 deg off-axis: radius f * 2 pi / 3 = 209.44 px.
    wide = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0, fov_deg=270.0)
    assert wide.max_theta == pytest.approx(math.radians(135))
    uv, valid = wide.project(pts)
    assert valid.tolist() == [True, True, False, False, True]
    np.testing.assert_allclose(uv[0].numpy(), [529.439510, 240.0], atol=1e-3)
    np.testing.assert_allclose(uv[1].numpy(), [320.0 + 50.0 * math.pi, 240.0], atol=1e-3)
    assert not wide.project(torch.tensor([[math.sin(2.5), 0.0, math.cos(2.5)]]))[1].item()  # 143 deg > 135
    # Beyond 90 deg there is no unit-z ray (NaN), but the direction round-trips.
    dirs, dvalid = wide.unproject_directions(uv[:2])
    assert dvalid.all()
    np.testing.assert_allclose(dirs.numpy(), torch.nn.functional.normalize(pts[:2], dim=-1).numpy(), atol=1e-5)
    assert torch.isnan(wide.unproject_rays(uv[:1])).all()


def test_fisheye_fold_over_limit():
    # k1 = -0.1: d theta_d / d theta = 1 - 0.3 theta^2 vanishes at theta = sqrt(1 / 0.3) = 1.8257 rad (104.6 deg).
    cam = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0, (-0.1, 0.0, 0.0, 0.0), fov_deg=360.0)
    assert cam.max_theta == pytest.approx(math.sqrt(1 / 0.3))
    theta = torch.tensor([math.radians(100), math.radians(110), math.radians(170)])
    pts = torch.stack((torch.sin(theta), torch.zeros(3), torch.cos(theta)), dim=-1)
    assert cam.project(pts)[1].tolist() == [True, False, False]
    # Default 180 deg field of view: the fold is beyond it, so the limit is 90 deg.
    assert FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0, (-0.1, 0.0, 0.0, 0.0)).max_theta == pytest.approx(
        math.pi / 2)
    # Pixels beyond the model's image circle (radius f theta_d(max_theta)) have no ray.
    r_px = cam.max_radius_px[0]
    assert r_px == pytest.approx(100 * math.sqrt(1 / 0.3) * (1 - 0.1 / 0.3))
    dirs, valid = cam.unproject_directions(torch.tensor([[320.0 + r_px - 1.0, 240.0], [320.0 + r_px + 1.0, 240.0]]))
    assert valid.tolist() == [True, False]


@pytest.mark.parametrize("cam", [T265, STRONG_FISHEYE, EQUIDISTANT], ids=["t265", "strong", "equidistant"])
def test_fisheye_roundtrip_over_whole_image(cam):
    uv = _whole_image_uv(cam)
    rays = cam.unproject_rays(uv)
    inside = torch.isfinite(rays).all(dim=-1)
    # Exactly the pixels inside the 180-degree image circle have rays.
    radius = (((uv[:, 0] - cam.cx) / cam.fx) ** 2 + ((uv[:, 1] - cam.cy) / cam.fy) ** 2).sqrt()
    theta_d_90 = cam.max_radius_px[0] / cam.fx
    assert torch.equal(inside, radius <= theta_d_90 * (1 + 1e-6))
    assert inside.float().mean() > 0.7
    depth = torch.linspace(0.3, 8.0, uv.shape[0])
    pts = cam.unproject(uv, depth)
    assert pts.dtype == torch.float32
    assert torch.allclose(pts[inside, 2], depth[inside])
    uv2, valid = cam.project(pts[inside])
    assert valid.all()
    err = (uv2 - uv[inside]).norm(dim=-1)
    assert err.max().item() < 1e-3, f"worst round-trip error {err.max().item():.2e} px"
    # Directions agree with the rays where both exist.
    dirs, dvalid = cam.unproject_directions(uv)
    assert torch.equal(dvalid, inside)
    assert torch.allclose(dirs[inside], torch.nn.functional.normalize(rays[inside], dim=-1), atol=1e-5)


def test_fisheye_is_not_pinhole():
    # Same intrinsics, different model: a 60 degree point lands at f * pi / 3 (fisheye) vs f * tan 60 (pinhole).
    fish = FisheyeCamera(640, 480, 100.0, 100.0, 320.0, 240.0)
    pin = PinholeCamera(640, 480, 100.0, 100.0, 320.0, 240.0)
    assert fish != pin
    p = torch.tensor([[math.sin(math.pi / 3), 0.0, math.cos(math.pi / 3)]])
    assert fish.project(p)[0][0, 0].item() == pytest.approx(320 + 100 * math.pi / 3, abs=1e-3)
    assert pin.project(p)[0][0, 0].item() == pytest.approx(320 + 100 * math.sqrt(3), abs=1e-3)


def test_fisheye_batch_shape_dtype_and_cache():
    pts = torch.rand(2, 5, 7, 3, dtype=torch.float64) * torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)
    pts = pts - torch.tensor([1.0, 1.0, -0.2], dtype=torch.float64)
    uv, valid = T265.project(pts)
    assert uv.shape == (2, 5, 7, 2) and valid.shape == (2, 5, 7) and uv.dtype == torch.float32 and valid.all()
    back = T265.unproject(uv, pts[..., 2])
    assert back.shape == (2, 5, 7, 3) and back.dtype == torch.float32
    assert torch.allclose(back, pts.float(), atol=1e-4)
    rays = T265.ray_grid(stride=4)
    assert rays.shape == (200, 212, 3) and T265.ray_grid(stride=4) is rays
    same = T265.unproject_rays(T265.pixel_grid(4))
    assert torch.equal(torch.isnan(rays), torch.isnan(same))
    assert torch.equal(torch.nan_to_num(rays), torch.nan_to_num(same))


def test_fisheye_with_size():
    half = T265.with_size(424, 400)
    assert isinstance(half, FisheyeCamera) and half.distortion == T265.distortion and half.fov_deg == T265.fov_deg
    assert half.fx == pytest.approx(143.0) and half.cx == pytest.approx((423.5 + 0.5) / 2 - 0.5)
    pts = T265.unproject(_whole_image_uv(T265), torch.full((848 * 800 + 4,), 2.0))
    pts = pts[torch.isfinite(pts).all(dim=-1)]
    uv, _ = T265.project(pts)
    uv_half, valid = half.project(pts)
    assert valid.all()
    assert torch.allclose(uv_half, (uv + 0.5) * 0.5 - 0.5, atol=1e-3)
    wide = FisheyeCamera(64, 48, 10.0, 10.0, 31.5, 23.5, fov_deg=200.0).with_size(128, 96)
    assert wide.fov_deg == 200.0 and wide.fx == 20.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(distortion=(0.1, 0.2, 0.3)), "0 or 4"),
        (dict(distortion=(0.1,) * 5), "0 or 4"),
        (dict(distortion=(0.1, math.inf, 0.0, 0.0)), "finite"),
        (dict(fov_deg=0.0), "fov_deg"),
        (dict(fov_deg=361.0), "fov_deg"),
        (dict(fx=-5.0), "focal"),
    ],
)
def test_fisheye_validation(kwargs, match):
    args = dict(width=64, height=48, fx=50.0, fy=50.0, cx=31.5, cy=23.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FisheyeCamera(**args)


def test_camera_model_is_abstract_and_shared():
    with pytest.raises(TypeError):
        CameraModel(64, 48, 50.0, 50.0, 31.5, 23.5)
    for cam in (FR1, RATIONAL, T265):
        assert isinstance(cam, CameraModel)
    assert PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5, RATIONAL_D).with_size(32, 24).distortion == RATIONAL_D


# ---------------------------------------------------------------------------------------------- CameraInfo factory

K = [420.0, 0.0, 319.5, 0.0, 420.0, 239.5, 0.0, 0.0, 1.0]


def test_camera_from_camera_info_all_models():
    cam = camera_from_camera_info(640, 480, K, list(RATIONAL_D), "rational_polynomial")
    assert cam == RATIONAL and type(cam) is PinholeCamera
    # Some drivers send 14 coefficients with zero thin-prism / tilt terms.
    assert camera_from_camera_info(640, 480, K, list(RATIONAL_D) + [0.0] * 6, "rational_polynomial") == RATIONAL
    fish = camera_from_camera_info(640, 480, [200, 0, 319.5, 0, 190, 239.5, 0, 0, 1], [0.0] * 4, "equidistant")
    assert fish == FisheyeCamera(640, 480, 200.0, 190.0, 319.5, 239.5, (0.0,) * 4) and not fish.has_distortion
    fish = camera_from_camera_info(848, 800, [286, 0, 423.5, 0, 286, 399.5, 0, 0, 1], list(T265.distortion),
                                   "Equidistant ")
    assert fish == T265
    assert camera_from_camera_info(640, 480, K, [], "equidistant").distortion == ()
    kk = [517.3, 0.0, 318.6, 0.0, 516.5, 255.3, 0.0, 0.0, 1.0]
    assert camera_from_camera_info(640, 480, kk, list(FR1_D), "plumb_bob") == FR1
    assert camera_from_camera_info(640, 480, kk, [], "") == FR1_UNDISTORTED
    assert camera_from_camera_info(640, 480, kk, [0.0] * 5, "none") == FR1_UNDISTORTED
    for cam in (FR1, RATIONAL, T265, EQUIDISTANT, FR1_UNDISTORTED):
        model, d = cam.camera_info_distortion
        assert camera_from_camera_info(cam.width, cam.height, cam.K.reshape(-1).tolist(), list(d), model).project(
            torch.tensor([[0.1, 0.2, 1.0]]))[0].tolist() == cam.project(torch.tensor([[0.1, 0.2, 1.0]]))[0].tolist()
    assert FR1_UNDISTORTED.camera_info_distortion == ("plumb_bob", (0.0,) * 5)
    assert EQUIDISTANT.camera_info_distortion == ("equidistant", (0.0,) * 4)


@pytest.mark.parametrize(
    "k, d, model, match",
    [
        (K, [0.1] * 5, "equidistant", "needs 0 or 4"),
        (K, [0.1] * 5, "rational_polynomial", "needs 0 or 8"),
        (K, [0.1] * 8, "plumb_bob", "needs 0 or 4 or 5"),
        (K, list(RATIONAL_D) + [0.0, 0.1, 0.0, 0.0], "rational_polynomial", "thin-prism"),
        (K, [0.1, math.nan, 0.0, 0.0], "equidistant", "finite"),
        (K, [0.1, 0.0, 0.0, 0.0], "", "no coefficients"),
        ([0.0, 0, 319.5, 0, 420, 239.5, 0, 0, 1], [], "plumb_bob", "focal"),
        ([420.0, 0, 319.5, 0, -420, 239.5, 0, 0, 1], [], "equidistant", "focal"),
        ([math.nan, 0, 319.5, 0, 420, 239.5, 0, 0, 1], [], "plumb_bob", "finite"),
        ([math.inf, 0, 319.5, 0, 420, 239.5, 0, 0, 1], [], "equidistant", "finite"),
        (K[:6], [], "equidistant", "9 values"),
        ([420.0, 1.0, 319.5, 0, 420, 239.5, 0, 0, 1], [], "rational_polynomial", "K must be"),
    ],
)
def test_camera_from_camera_info_rejects_bad_inputs(k, d, model, match):
    with pytest.raises(ValueError, match=match):
        camera_from_camera_info(640, 480, k, d, model)


def test_camera_info_message_round_trip():
    pytest.importorskip("sensor_msgs.msg")
    from builtin_interfaces.msg import Time

    from egox_ros.ros.conversions import camera_info_to_camera, camera_to_camera_info
    for cam, model, n in ((FR1, "plumb_bob", 5), (FR1_UNDISTORTED, "plumb_bob", 5),
                          (RATIONAL, "rational_polynomial", 8), (T265, "equidistant", 4)):
        msg = camera_to_camera_info(cam, Time(sec=1, nanosec=2), "cam")
        assert msg.distortion_model == model and len(msg.d) == n and msg.header.frame_id == "cam"
        assert list(msg.k) == cam.K.reshape(-1).tolist()
        back = camera_info_to_camera(msg)
        assert type(back) is type(cam)
        assert (back.fx, back.fy, back.cx, back.cy, back.width, back.height) == (
            cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height)
        assert back.distortion == cam.camera_info_distortion[1] or back.distortion == cam.distortion
    msg = camera_to_camera_info(FR1, Time(), "cam")
    msg.distortion_model = "fisheye"
    with pytest.raises(ValueError, match="fisheye"):
        camera_info_to_camera(msg)


# ---------------------------------------------------------------------------------------------- config and render

def test_ego_camera_config_models():
    from egox_ros.core.config import EgoCameraConfig
    from egox_ros.core.runtime.pipeline import ego_camera_from_config

    default = ego_camera_from_config(EgoCameraConfig())
    assert type(default) is PinholeCamera and not default.has_distortion and default.width == 448
    fish = ego_camera_from_config(EgoCameraConfig(model="equidistant", distortion=[0.1, 0.0, -0.01, 0.0]))
    assert type(fish) is FisheyeCamera and fish.distortion == (0.1, 0.0, -0.01, 0.0)
    assert type(ego_camera_from_config(EgoCameraConfig(model="equidistant"))) is FisheyeCamera
    rational = ego_camera_from_config(EgoCameraConfig(distortion=list(RATIONAL_D)))
    assert type(rational) is PinholeCamera and rational.is_rational
    assert ego_camera_from_config(EgoCameraConfig(distortion=list(FR1_D))).distortion == FR1_D
    with pytest.raises(ValueError, match="model"):
        EgoCameraConfig(model="fisheye")
    with pytest.raises(ValueError, match="8 coefficients; the 'equidistant' model takes 0, 4"):
        EgoCameraConfig(model="equidistant", distortion=list(RATIONAL_D))
    with pytest.raises(ValueError, match="3 coefficients"):
        EgoCameraConfig(distortion=[0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="distortion"):
        EgoCameraConfig(distortion=[0.1, 0.0, 0.0, math.nan])


def test_render_points_into_fisheye_camera():
    from egox_ros.core.geometry.render import PointCloud, render_points

    cam = FisheyeCamera(64, 48, 12.0, 12.0, 31.5, 23.5, (0.02, -0.003, 0.0, 0.0))
    # A dense 8 m x 8 m plane 2 m in front of the camera, and a red plane 1 m behind it that must not show.
    g = torch.linspace(-4.0, 4.0, 401)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    front = torch.stack((xx.reshape(-1), yy.reshape(-1), torch.full((g.numel() ** 2,), 2.0)), dim=-1)
    behind = front * torch.tensor([1.0, 1.0, -0.5])
    colors = torch.cat((torch.tensor([[0, 200, 0]]).expand(len(front), 3), torch.tensor([[255, 0, 0]]).expand(
        len(behind), 3))).to(torch.uint8)
    cloud = PointCloud(torch.cat((front, behind)), colors.contiguous())
    view = render_points(cloud, cam, torch.eye(4), point_radius_px=1)
    assert view.mask[20:28, 28:36].all()
    assert view.rgb[24, 32].tolist() == [0, 200, 0]
    assert (view.depth_m[view.mask] > 0).all()
    assert torch.allclose(view.depth_m[20:28, 28:36], torch.tensor(2.0), atol=1e-6)
    assert not (view.rgb[..., 0] == 255).any()
    # The image circle (90 deg, ~19 px radius) is smaller than the image: its corners see nothing.
    assert not view.mask[0, 0] and view.mask.float().mean() < 1.0
