"""Project Aria fisheye (FisheyeRadTanThinPrism) camera: hand-computed projections, round trips, reduction to the
equidistant fisheye, CameraInfo, the 90-degree upright rotation, the ego camera config and rendering into it.

Test lens (made up, Aria-RGB-like): the 1408 px Aria RGB image has f ~ 610 px; scaled to 480 px that is f ~ 208, so
ARIA uses f = 200 px on a 480 x 480 image, with a radial polynomial that expands like a stereographic lens near the
centre (k0 = 0.35) and stays monotonic up to 90 degrees, and tangential / thin-prism terms of a few 1e-4, the size
real calibrations have.  ARIA_WIDE (f = 130 px) has an image circle smaller than the image: its corners are beyond
90 degrees and have no ray.
"""

import math

import numpy as np
import pytest
import torch

from egox_ros.core.geometry.cameras import (ARIA_DISTORTION_MODEL, AriaFisheyeCamera, CameraModel, FisheyeCamera,
                                            PinholeCamera, camera_from_camera_info, rotated_90_pose)

ARIA_D = (0.35, -0.12, 0.03, -0.004, 2e-4, -5e-6,      # k0..k5
          4e-4, -3e-4,                                   # p0 p1
          -5e-4, 1e-4, 3e-4, -6e-5)                      # s0 s1 s2 s3
ARIA = AriaFisheyeCamera(480, 480, 200.0, 200.0, 239.2, 240.7, ARIA_D)
ARIA_WIDE = AriaFisheyeCamera(480, 480, 130.0, 130.0, 239.2, 240.7, ARIA_D)


def _reference_project(d, f, cx, cy, point):
    """The model written out with plain math for one point, independently of the class."""
    x, y, z = point
    r = math.sqrt(x * x + y * y)
    theta = math.atan2(r, z)
    k0, k1, k2, k3, k4, k5, p0, p1, s0, s1, s2, s3 = d
    th_r = theta + k0 * theta ** 3 + k1 * theta ** 5 + k2 * theta ** 7 + k3 * theta ** 9 + k4 * theta ** 11 \
        + k5 * theta ** 13
    xr, yr = th_r * x / r, th_r * y / r
    rd2 = xr ** 2 + yr ** 2
    xd = xr + (2 * xr ** 2 + rd2) * p0 + 2 * xr * yr * p1 + s0 * rd2 + s1 * rd2 ** 2
    yd = yr + (2 * yr ** 2 + rd2) * p1 + 2 * xr * yr * p0 + s2 * rd2 + s3 * rd2 ** 2
    return f * xd + cx, f * yd + cy


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle [rad] between the vectors of two (N, 3) tensors, accurate for tiny angles (float64)."""
    a, b = a.double(), b.double()
    return torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))


def _whole_image_uv(cam: CameraModel) -> torch.Tensor:
    grid = cam.pixel_grid().reshape(-1, 2)
    corners = torch.tensor([[-0.5, -0.5], [cam.width - 0.5, -0.5], [-0.5, cam.height - 0.5],
                            [cam.width - 0.5, cam.height - 0.5]])
    return torch.cat([grid, corners])


# ---------------------------------------------------------------------------------------------- projection


def test_known_values_by_hand():
    # Exaggerated coefficients so that every term moves the pixel by well over the tolerance.
    d = (0.1, -0.02, 0.003, 0.0, 0.0, 0.0, 0.01, -0.005, 0.002, -0.001, 0.004, 0.0005)
    cam = AriaFisheyeCamera(640, 480, 250.0, 250.0, 320.0, 240.0, d)
    points = [(0.3, -0.2, 1.0), (-1.0, 0.5, 0.8), (0.0, 2.0, 1.0)]
    uv, valid = cam.project(torch.tensor(points, dtype=torch.float64))
    assert valid.all() and uv.dtype == torch.float32
    for (u, v), p in zip(uv.tolist(), points):
        ru, rv = _reference_project(d, 250.0, 320.0, 240.0, p)
        assert abs(u - ru) < 1e-4 and abs(v - rv) < 1e-4
    # The first point written out by hand: theta = atan(sqrt(0.13)) = 0.3460 rad, th_r = 0.35008, ...
    theta = math.atan(math.sqrt(0.13))
    th_r = theta * (1 + 0.1 * theta ** 2 - 0.02 * theta ** 4 + 0.003 * theta ** 6)
    xr, yr = th_r * 0.3 / math.sqrt(0.13), -th_r * 0.2 / math.sqrt(0.13)
    rd2 = th_r ** 2
    xd = xr + 0.01 * (2 * xr * xr + rd2) - 0.005 * 2 * xr * yr + 0.002 * rd2 - 0.001 * rd2 ** 2
    yd = yr - 0.005 * (2 * yr * yr + rd2) + 0.01 * 2 * xr * yr + 0.004 * rd2 + 0.0005 * rd2 ** 2
    assert uv[0].tolist() == pytest.approx([250 * xd + 320, 250 * yd + 240], abs=1e-4)
    # On the optical axis: the principal point.
    assert cam.project(torch.tensor([[0.0, 0.0, 2.0]]))[0].tolist() == [[320.0, 240.0]]
    # float32 input gives the same pixels to the float32 floor.
    uv32, _ = cam.project(torch.tensor(points, dtype=torch.float32))
    assert (uv32 - uv).abs().max() < 1e-3


def test_zero_coefficients_are_the_equidistant_fisheye():
    aria = AriaFisheyeCamera(480, 480, 150.0, 148.0, 239.5, 241.0)
    assert aria.distortion == (0.0,) * 12 and not aria.has_distortion
    assert aria == AriaFisheyeCamera(480, 480, 150.0, 148.0, 239.5, 241.0, (0.0,) * 12)
    fish = FisheyeCamera(480, 480, 150.0, 148.0, 239.5, 241.0, (0.0,) * 4)
    torch.manual_seed(0)
    pts = torch.randn(5000, 3, dtype=torch.float64)
    pts[:, 2] = pts[:, 2].abs() + 0.01
    uv_a, valid_a = aria.project(pts)
    uv_f, valid_f = fish.project(pts)
    assert torch.equal(valid_a, valid_f) and valid_a.all()
    assert (uv_a - uv_f).abs().max() < 1e-6 * 480   # float32 pixels: 1e-6 relative; measured 3e-5 px
    uv = _whole_image_uv(aria)
    ra, rf = aria.unproject_rays(uv), fish.unproject_rays(uv)
    assert torch.equal(torch.isfinite(ra), torch.isfinite(rf))
    ok = torch.isfinite(ra).all(-1)
    assert _angle(ra[ok], rf[ok]).max() < 1e-6


def test_points_behind_or_beyond_the_field_of_view_are_invalid():
    pts = torch.tensor([[0.0, 0.0, -1.0], [0.1, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    _, valid = ARIA.project(pts)
    assert valid.tolist() == [False, False, False, False, True]
    narrow = AriaFisheyeCamera(480, 480, 200.0, 200.0, 239.5, 239.5, ARIA_D, fov_deg=100.0)
    assert narrow.max_theta == pytest.approx(math.radians(50.0))
    _, valid = narrow.project(torch.tensor([[math.tan(math.radians(49.0)), 0.0, 1.0],
                                            [math.tan(math.radians(51.0)), 0.0, 1.0]]))
    assert valid.tolist() == [True, False]
    with pytest.raises(ValueError, match="fov_deg"):
        AriaFisheyeCamera(480, 480, 200.0, 200.0, 239.5, 239.5, fov_deg=200.0)


def test_fold_over_limit_of_the_radial_polynomial():
    # th_r = theta (1 - 0.2 theta^2) turns at theta^2 = 1 / 0.6: points beyond would fold back into the image.
    cam = AriaFisheyeCamera(480, 480, 150.0, 150.0, 239.5, 239.5, (-0.2,) + (0.0,) * 11)
    limit = math.sqrt(1 / 0.6)
    assert cam.max_theta == pytest.approx(limit)
    _, valid = cam.project(torch.tensor([[math.tan(limit - 0.01), 0.0, 1.0], [math.tan(limit + 0.01), 0.0, 1.0]]))
    assert valid.tolist() == [True, False]
    # Pixels beyond the image circle have no ray.
    rays = cam.unproject_rays(torch.tensor([[239.5 + 150 * 0.85, 239.5], [239.5 + 150 * 0.87, 239.5]]))
    assert torch.isfinite(rays[0]).all() and torch.isnan(rays[1]).all()


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cam", [ARIA, ARIA_WIDE], ids=["aria", "aria_wide"])
def test_pixel_round_trip_over_the_whole_image(cam):
    uv = _whole_image_uv(cam)
    rays = cam.unproject_rays(uv)
    assert rays.dtype == torch.float32 and rays.shape == (len(uv), 3)
    ok = torch.isfinite(rays).all(-1)
    assert torch.equal(torch.isnan(rays).all(-1), ~ok)       # NaN rows are all NaN
    assert (rays[ok, 2] == 1.0).all()
    # float64 evaluation of the model: measured 1.7e-5 px (the float32 rays and pixels); float32: 9.8e-5 px.
    back64, valid64 = cam.project(rays[ok].to(torch.float64))
    assert valid64.all()
    assert (back64.double() - uv[ok].double()).norm(dim=-1).max() < 1e-4
    back32, valid32 = cam.project(rays[ok])
    assert valid32.all()
    assert (back32.double() - uv[ok].double()).norm(dim=-1).max() < 2e-4
    if cam is ARIA:
        assert ok.all()               # the whole image is inside the image circle (corners at 72 degrees)
    else:
        # Corners beyond 90 degrees: no ray; the centre and the edge midpoints have one.
        assert not ok[-4:].any() and ok.float().mean() > 0.9
        centre = cam.unproject_rays(torch.tensor([[cam.cx, cam.cy]], dtype=torch.float64))
        assert centre[0].tolist() == [0.0, 0.0, 1.0]


def test_direction_round_trip_of_random_points():
    torch.manual_seed(1)
    n = 20000
    theta = torch.rand(n, dtype=torch.float64) * math.radians(89.0)
    phi = torch.rand(n, dtype=torch.float64) * 2 * math.pi
    dirs = torch.stack((torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)), -1)
    pts = dirs * (0.5 + 5 * torch.rand(n, 1, dtype=torch.float64))
    uv, valid = ARIA.project(pts)
    assert valid.all()
    back, ok = ARIA.unproject_directions(uv)
    assert ok.all() and back.dtype == torch.float32
    assert ((back.norm(dim=-1) - 1).abs() < 1e-6).all()
    # Measured 1.2e-7 rad: the float32 pixels and directions.
    assert _angle(back, dirs).max() < 1e-6
    rays = ARIA.unproject_rays(uv)
    assert torch.isfinite(rays).all()
    assert _angle(rays, dirs).max() < 1e-6
    # Depth along z: unproject(project(p), z) == p.
    near = theta < math.radians(80.0)
    points = ARIA.unproject(uv[near], pts[near, 2].float())
    assert (points.double() - pts[near]).norm(dim=-1).max() < 1e-4 * pts[near].norm(dim=-1).max()


def test_unproject_directions_validity_and_shapes():
    uv = ARIA_WIDE.pixel_grid(stride=8)
    dirs, valid = ARIA_WIDE.unproject_directions(uv)
    assert dirs.shape == uv.shape[:-1] + (3,) and valid.shape == uv.shape[:-1]
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(()), atol=1e-6)
    assert not valid[0, 0] and valid[uv.shape[0] // 2, uv.shape[1] // 2]
    assert dirs[0, 0].tolist() == [0.0, 0.0, 1.0]
    assert torch.equal(valid, torch.isfinite(ARIA_WIDE.unproject_rays(uv)).all(-1))
    nan = ARIA.unproject_rays(torch.tensor([[math.nan, 3.0]]))
    assert torch.isnan(nan).all()


def test_ray_grid_is_unit_z_or_nan_and_cached():
    grid = ARIA_WIDE.ray_grid(stride=4)
    assert grid is ARIA_WIDE.ray_grid(stride=4)
    finite = torch.isfinite(grid).all(-1)
    assert (grid[finite][:, 2] == 1.0).all() and torch.isnan(grid[~finite]).all()


def test_with_size_and_crop_keep_the_projection():
    pts = torch.tensor([[0.2, -0.1, 1.0], [-0.7, 0.4, 0.9]], dtype=torch.float64)
    small = ARIA.with_size(240, 240)
    assert type(small) is AriaFisheyeCamera and small.distortion == ARIA.distortion
    uv, _ = ARIA.project(pts)
    uv_small, _ = small.project(pts)
    assert torch.allclose((uv_small + 0.5) * 2 - 0.5, uv, atol=1e-3)
    crop = ARIA.cropped(10, 20, 400, 400)
    assert torch.allclose(crop.project(pts)[0], uv - torch.tensor([10.0, 20.0]), atol=1e-4)


def test_validation():
    with pytest.raises(ValueError, match="0 or 12"):
        AriaFisheyeCamera(480, 480, 200.0, 200.0, 239.5, 239.5, (0.1,) * 4)
    with pytest.raises(ValueError, match="finite"):
        AriaFisheyeCamera(480, 480, 200.0, 200.0, 239.5, 239.5, (math.nan,) + (0.0,) * 11)
    with pytest.raises(ValueError, match="focal"):
        AriaFisheyeCamera(480, 480, 0.0, 200.0, 239.5, 239.5)
    assert isinstance(ARIA, CameraModel) and ARIA.has_distortion
    assert hash(ARIA) == hash(AriaFisheyeCamera(480, 480, 200.0, 200.0, 239.2, 240.7, ARIA_D))


# ---------------------------------------------------------------------------------------------- CameraInfo


def test_camera_info_round_trip():
    model, d = ARIA.camera_info_distortion
    assert model == ARIA_DISTORTION_MODEL == "fisheye_rad_tan_thin_prism" and d == ARIA_D
    back = camera_from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), list(d), model)
    assert back == ARIA and type(back) is AriaFisheyeCamera
    assert camera_from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), list(d), "Fisheye624") == ARIA
    assert camera_from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), [], model).distortion == (0.0,) * 12
    assert AriaFisheyeCamera.from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), list(d), model) == ARIA
    with pytest.raises(ValueError, match="needs 0 or 12"):
        camera_from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), list(d[:8]), model)
    with pytest.raises(ValueError, match="fisheye_rad_tan_thin_prism"):
        camera_from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), list(d), "aria_fisheye")
    with pytest.raises(ValueError, match="camera_from_camera_info"):
        PinholeCamera.from_camera_info(480, 480, ARIA.K.reshape(-1).tolist(), list(d), model)


def test_camera_info_message_round_trip():
    pytest.importorskip("sensor_msgs.msg")
    from builtin_interfaces.msg import Time

    from egox_ros.ros.conversions import camera_info_to_camera, camera_to_camera_info
    msg = camera_to_camera_info(ARIA, Time(sec=3), "aria")
    assert msg.distortion_model == "fisheye_rad_tan_thin_prism" and len(msg.d) == 12
    assert camera_info_to_camera(msg) == ARIA


# ---------------------------------------------------------------------------------------------- 90-degree rotation


def _random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = q, rng.normal(size=3)
    return pose


def _points_in_front(cam: CameraModel, pose: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """World points whose projections cover the camera's image."""
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([cam.width - 1.0, cam.height - 1.0])
    rays = cam.unproject_rays(uv).double()
    ok = torch.isfinite(rays).all(-1)
    cam_pts = rays[ok] * (0.5 + 3 * torch.rand(int(ok.sum()), 1, generator=g, dtype=torch.float64))
    return cam_pts @ torch.from_numpy(pose[:3, :3]).T + torch.from_numpy(pose[:3, 3])


@pytest.mark.parametrize("cam", [
    ARIA,
    AriaFisheyeCamera(640, 480, 210.0, 205.0, 300.3, 250.8, ARIA_D),
    PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    PinholeCamera(640, 480, 610.0, 600.0, 330.0, 250.0, (0.45, -2.6, 5e-4, -3e-4, 1.5, 0.33, -2.4, 1.4)),
    FisheyeCamera(640, 480, 200.0, 190.0, 319.5, 239.5, (0.02, -0.003, 0.0, 0.0)),
], ids=["aria", "aria_nonsquare", "plumb_bob", "rational", "equidistant"])
@pytest.mark.parametrize("clockwise", [True, False], ids=["cw", "ccw"])
def test_rotated_90_projects_to_the_rotated_pixels(cam, clockwise):
    pose = _random_pose(3)
    rot = cam.rotated_90(clockwise)
    rot_pose = rotated_90_pose(pose, clockwise)
    assert (rot.width, rot.height) == (cam.height, cam.width) and type(rot) is type(cam)
    world = _points_in_front(cam, pose, 2000, 4)
    def project(c, p):
        inv = np.linalg.inv(p)
        pc = world @ torch.from_numpy(inv[:3, :3]).T + torch.from_numpy(inv[:3, 3])
        return c.project(pc)
    (uv, valid), (uv_rot, valid_rot) = project(cam, pose), project(rot, rot_pose)
    assert valid.all() and valid_rot.all()
    u, v = uv.double().unbind(-1)
    expected = torch.stack((cam.height - 1 - v, u) if clockwise else (v, cam.width - 1 - u), -1)
    assert (uv_rot.double() - expected).abs().max() < 1e-3     # float32 pixels; measured < 1e-4
    # Rotating back the other way restores the camera.
    back = rot.rotated_90(not clockwise)
    assert back.width == cam.width and back.height == cam.height
    assert np.allclose([back.fx, back.fy, back.cx, back.cy], [cam.fx, cam.fy, cam.cx, cam.cy])
    assert np.allclose(back.distortion, cam.distortion)
    assert np.allclose(rotated_90_pose(rot_pose, not clockwise), pose)


def test_rotated_90_render_equals_rot90_of_the_render():
    from egox_ros.core.geometry.render import PointCloud, render_points

    cam = AriaFisheyeCamera(64, 48, 22.0, 22.0, 31.5, 23.5, ARIA_D)
    pose = _random_pose(5)
    # One point per pixel centre, at varied depths, coloured by its pixel.
    uv = cam.pixel_grid().reshape(-1, 2).double()
    rays = cam.unproject_rays(uv).double()
    ok = torch.isfinite(rays).all(-1)
    depth = 1.0 + (torch.arange(len(uv)) % 7).double() * 0.3
    pts = (rays * depth[:, None])[ok]
    world = pts @ torch.from_numpy(pose[:3, :3]).T + torch.from_numpy(pose[:3, 3])
    colors = torch.stack((uv[ok, 0] * 3, uv[ok, 1] * 5, depth[ok] * 40), -1).to(torch.uint8)
    cloud = PointCloud(world.float(), colors)
    view = render_points(cloud, cam, torch.from_numpy(pose), point_radius_px=0)
    assert view.mask.float().mean() > 0.99
    for clockwise, k in ((True, -1), (False, 1)):
        rot_view = render_points(cloud, cam.rotated_90(clockwise), torch.from_numpy(rotated_90_pose(pose, clockwise)),
                                 point_radius_px=0)
        assert torch.equal(rot_view.rgb, torch.from_numpy(np.rot90(view.rgb.numpy(), k=k).copy()))
        assert torch.equal(rot_view.mask, torch.from_numpy(np.rot90(view.mask.numpy(), k=k).copy()))


def test_rotated_90_pose_accepts_torch():
    pose = torch.from_numpy(_random_pose(6))
    rot = rotated_90_pose(pose)
    assert torch.is_tensor(rot) and rot.dtype == torch.float64
    assert np.allclose(rot.numpy(), rotated_90_pose(pose.numpy()))
    # Clockwise: the rotated camera's x axis is the original -y, its y axis the original x.
    assert np.allclose(rot[:3, 0].numpy(), -pose[:3, 1].numpy()) and np.allclose(rot[:3, 1].numpy(), pose[:3, 0])
    with pytest.raises(ValueError, match="4x4"):
        rotated_90_pose(np.eye(3))


# ---------------------------------------------------------------------------------------------- config, prior, GGA


def test_ego_camera_config_aria():
    from egox_ros.core.config import EgoCameraConfig
    from egox_ros.core.runtime.pipeline import ego_camera_from_config

    config = EgoCameraConfig(model="aria", width=480, height=480, fx=200.0, fy=200.0, cx=239.2, cy=240.7,
                             distortion=list(ARIA_D))
    cam = ego_camera_from_config(config)
    assert cam == ARIA and type(cam) is AriaFisheyeCamera
    # All zeros (the 4-zero default too) is the pure equidistant fisheye.
    for zeros in ([0.0] * 4, [0.0] * 12, []):
        pure = ego_camera_from_config(EgoCameraConfig(model="aria", distortion=zeros))
        assert type(pure) is AriaFisheyeCamera and pure.distortion == (0.0,) * 12
    with pytest.raises(ValueError, match="4 coefficients; the 'aria' model takes 0, 12"):
        EgoCameraConfig(model="aria", distortion=[0.1, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="8 coefficients; the 'aria' model takes 0, 12"):
        EgoCameraConfig(model="aria", distortion=list(ARIA_D[:8]))
    with pytest.raises(ValueError, match="13 coefficients"):
        EgoCameraConfig(model="aria", distortion=list(ARIA_D) + [0.0])
    # The default stays the undistorted pinhole.
    assert type(ego_camera_from_config(EgoCameraConfig())) is PinholeCamera


def test_prior_renders_where_project_says():
    from egox_ros.core.geometry.render import PointCloud, render_points

    cam = AriaFisheyeCamera(96, 96, 40.0, 40.0, 47.3, 48.1, ARIA_D)
    pose = _random_pose(7)
    world = _points_in_front(cam, pose, 40, 8)
    inv = np.linalg.inv(pose)
    pc = world @ torch.from_numpy(inv[:3, :3]).T + torch.from_numpy(inv[:3, 3])
    uv, valid = cam.project(pc)
    assert valid.all()
    colors = torch.stack((torch.arange(len(world)) * 5 + 10, torch.full((len(world),), 7),
                          torch.full((len(world),), 9)), -1).to(torch.uint8)
    view = render_points(PointCloud(world.float(), colors), cam, torch.from_numpy(pose), point_radius_px=0)
    pix = torch.floor(uv + 0.5).long()
    for i, (u, v) in enumerate(pix.tolist()):
        seen = int(view.rgb[v, u, 0])
        # Each point lands on the pixel project() gives (unless a nearer point took that pixel).
        owner = (pix == pix[i]).all(-1).nonzero().squeeze(1)
        nearest = owner[pc[owner, 2].argmin()]
        assert seen == int(colors[nearest, 0])
        assert view.depth_m[v, u] == pytest.approx(float(pc[nearest, 2]), rel=1e-5)
    assert int(view.mask.sum()) == len(torch.unique(pix, dim=0))


def test_gga_tables_with_an_aria_ego_camera():
    from egox_ros.core.attention.directions import gga_tables_from_geometry

    # An Aria ego camera whose image circle covers the whole (multiple-of-16) image.
    ego = AriaFisheyeCamera(64, 64, 30.0, 30.0, 31.5, 31.5, ARIA_D)
    assert torch.isfinite(ego.ray_grid()).all()
    exo = PinholeCamera(64, 64, 40.0, 40.0, 31.5, 31.5)
    poses = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    tables, layout = gga_tables_from_geometry(ego, poses, exo, poses, torch.full((5, 64, 64), 3.0))
    q = tables.query_dir[tables.query_is_ego]
    assert torch.isfinite(q).all() and (q.norm(dim=-1) > 0.9).all()
