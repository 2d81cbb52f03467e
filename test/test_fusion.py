"""Point-cloud fusion over the window: static per-pixel averaging, voxel fusion on real TUM RGB-D frames, bounds."""

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.fusion import (AutoFusion, CameraMovedError, CloudFusion, ConcatFusion, FusionConfig,
                                           StaticCameraFusion, VoxelFusion, make_fusion, reliable_depth)
from egox_ros.core.geometry.render import render_points

# ----------------------------------------------------------------------------- helpers

SMALL = PinholeCamera(64, 48, 60.0, 60.0, 31.5, 23.5)


def _config(**overrides) -> FusionConfig:
    """The settings these tests were written for (full-resolution lifting, a 16-frame window, static mode raising on
    motion, no depth-edge filter: its own tests are below), whatever the node's defaults are."""
    return FusionConfig(**{"stride": 1, "window_frames": 16, "static_on_move": "raise", "edge_window_px": 0,
                           **overrides})


def _pose(t=(0.0, 0.0, 0.0), yaw_deg: float = 0.0) -> np.ndarray:
    a = math.radians(yaw_deg)
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    m[:3, 3] = t
    return m


def _flat(depth: float, color=(200, 100, 50), cam: PinholeCamera = SMALL):
    rgb = torch.empty((cam.height, cam.width, 3), dtype=torch.uint8)
    rgb[:] = torch.tensor(color, dtype=torch.uint8)
    return rgb, torch.full((cam.height, cam.width), depth, dtype=torch.float32)


def _masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    diff = (a.float() - b.float())[mask]
    return 10.0 * math.log10(255.0**2 / float((diff**2).mean()))


# Real frames: TUM RGB-D fr1_rpy (Sturm et al., IROS 2012, CC BY 4.0); see ../shared/data/tum_rgbd/README.md.
TUM_FR1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "tum_rgbd" / "fr1_rpy_60"
FR1 = PinholeCamera(640, 480, 517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))
needs_tum = pytest.mark.skipif(not (TUM_FR1 / "associations.txt").is_file(), reason="TUM RGB-D sample not found")


def _rows(path: Path) -> list[list[str]]:
    return [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@lru_cache(maxsize=None)
def _tum(index: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """rgb (480, 640, 3) uint8, depth (480, 640) float32 metres (NaN = no reading), world_T_camera (4, 4) float64."""
    from PIL import Image

    t_rgb, rgb_file, _, depth_file = _rows(TUM_FR1 / "associations.txt")[index]
    gt = np.array(_rows(TUM_FR1 / "groundtruth.txt"), dtype=np.float64)
    row = gt[np.argmin(np.abs(gt[:, 0] - float(t_rgb)))]
    x, y, z, w = row[4:8] / np.linalg.norm(row[4:8])
    pose = np.eye(4)
    pose[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    pose[:3, 3] = row[1:4]
    rgb = torch.from_numpy(np.array(Image.open(TUM_FR1 / rgb_file).convert("RGB")))
    depth = np.array(Image.open(TUM_FR1 / depth_file)).astype(np.float32) / 5000.0
    depth[depth == 0] = np.nan
    return rgb, torch.from_numpy(depth), pose


# ----------------------------------------------------------------------------- config and interface


def test_config_validation_and_factory():
    with pytest.raises(ValueError, match="mode"):
        _config(mode="magic")
    with pytest.raises(ValueError, match="min_depth_m"):
        _config(min_depth_m=5.0, max_depth_m=1.0)
    with pytest.raises(ValueError, match="voxel_size_m"):
        _config(voxel_size_m=0.0)
    assert FusionConfig().mode == "auto"
    for mode, cls in (("static", StaticCameraFusion), ("moving", VoxelFusion), ("concat", ConcatFusion),
                      ("auto", AutoFusion)):
        fusion = make_fusion(_config(mode=mode))
        assert isinstance(fusion, cls) and isinstance(fusion, CloudFusion)
        assert len(fusion) == 0 and len(fusion.cloud()) == 0
        rgb, depth = _flat(2.0)
        fusion.add(10, rgb, depth, SMALL, _pose())
        assert len(fusion) == 1 and len(fusion.cloud()) > 0
        with pytest.raises(ValueError, match="not after"):
            fusion.add(10, rgb, depth, SMALL, _pose())
        with pytest.raises(ValueError, match="shape"):
            fusion.add(11, rgb[:-1], depth[:-1], SMALL, _pose())
        fusion.reset()
        assert len(fusion) == 0 and len(fusion.cloud()) == 0


# ----------------------------------------------------------------------------- static camera


@needs_tum
def test_static_fusion_averages_depth_and_colour_noise():
    rgb, depth, pose = _tum(20)
    gen = torch.Generator().manual_seed(0)
    sigma_m, sigma_rgb, n = 0.01, 12.0, 16
    fusion = StaticCameraFusion(_config(mode="static", window_frames=n, static_window_frames=n))
    single = None
    for k in range(n):
        noisy_d = depth + sigma_m * torch.randn(depth.shape, generator=gen)
        noisy_rgb = (rgb.float() + sigma_rgb * torch.randn(rgb.shape, generator=gen)).round().clamp(0, 255)
        fusion.add(k, noisy_rgb.to(torch.uint8), noisy_d, FR1, pose)
        single = noisy_d if single is None else single
    valid = torch.isfinite(depth) & (depth > 0.2)
    fused = fusion.background_depth()
    per_frame_std = float((single - depth)[valid].std())
    fused_std = float((fused - depth)[valid].std())
    rgb_err = float((fusion.background_rgb().float() - rgb.float())[valid].std())
    # Averaging 16 independent readings divides the noise by 4 (plus the effect of clamping the colours).
    assert per_frame_std == pytest.approx(sigma_m, rel=0.05)
    assert fused_std < per_frame_std / 3.5
    assert rgb_err < sigma_rgb / 3.0
    # The fused cloud has one point per observed pixel and renders back onto the clean depth.
    cloud = fusion.cloud()
    assert len(cloud) == int(torch.isfinite(fused).sum())
    view = render_points(cloud, FR1, torch.from_numpy(pose), point_radius_px=0)
    both = view.mask & valid
    assert float((view.depth_m - depth)[both].abs().median()) < 0.004
    assert fusion.cloud() is cloud  # cached until the next change


def test_static_dynamic_mask_keeps_people_out_of_the_background():
    cfg = _config(mode="static", window_frames=8, static_window_frames=8)
    fusion = StaticCameraFusion(cfg)
    person = torch.zeros((SMALL.height, SMALL.width), dtype=torch.bool)
    for k in range(4):
        rgb, depth = _flat(2.0, (10, 200, 10))
        mask = torch.zeros_like(person)
        mask[10:30, 8 * k: 8 * k + 10] = True  # the "person" walks to the right, always masked
        mask[40:, :5] = True  # this corner is always occupied
        depth[mask] = 1.0
        rgb[mask] = torch.tensor([255, 0, 255], dtype=torch.uint8)
        fusion.add(100 + k, rgb, depth, SMALL, _pose(), dynamic_mask=mask)
        person |= mask
    background = fusion.cloud()
    z = background.points_world[:, 2]
    assert torch.allclose(z, torch.full_like(z, 2.0), atol=1e-5)  # no person point reached the background
    assert (background.colors == torch.tensor([10, 200, 10], dtype=torch.uint8)).all()
    never_free = torch.zeros_like(person)
    never_free[40:, :5] = True
    assert len(background) == SMALL.width * SMALL.height - int(never_free.sum())
    assert torch.isnan(fusion.background_depth()[never_free]).all()
    # Each frame's cloud = background + only that frame's person.
    frame = fusion.frame_cloud(103)
    assert len(frame) == len(background) + 10 * 20 + 8 * 5
    near = frame.points_world[:, 2] < 1.5
    assert int(near.sum()) == 240 and (frame.colors[near] == torch.tensor([255, 0, 255], dtype=torch.uint8)).all()
    assert len(fusion.frame_cloud(999)) == len(background)  # unknown frame: background only


def test_static_memory_is_bounded_by_the_image_not_the_window():
    fusion = StaticCameraFusion(_config(mode="static", window_frames=8, static_window_frames=8))
    sizes = []
    for k in range(200):
        rgb, depth = _flat(2.0 + 0.001 * (k % 7))
        mask = torch.zeros(depth.shape, dtype=torch.bool)
        mask[:4, :4] = True
        fusion.add(k, rgb, depth, SMALL, _pose(), dynamic_mask=mask)
        fusion.cloud()
        sizes.append(fusion.nbytes())
    assert len(fusion) == 8
    assert max(sizes[20:]) == sizes[20]  # constant once the dynamic store holds its window of frames
    assert len(fusion._dynamic.clouds) == 8
    # Exponential average after the window fills: the mean follows the recent readings.
    fusion.add(1000, *_flat(3.0), SMALL, _pose())
    d = fusion.background_depth()[10, 10].item()
    assert d == pytest.approx(2.003 + (3.0 - 2.003) / 8, abs=0.004)


def _columns(cloud) -> torch.Tensor:
    """SMALL's image column of each point of a cloud seen from the identity pose."""
    p = cloud.points_world
    return (SMALL.fx * p[:, 0] / p[:, 2] + SMALL.cx).round().to(torch.int64)


@pytest.mark.parametrize("compiled", [True, False])
def test_static_cloud_colours_are_the_mean_truncated_as_released(compiled, monkeypatch):
    """The released renderer writes its mean colours to uint8 by truncation: readings 10, 11, 11 average to 10.67,
    which comes out 10 (rounding would give 11), in the compiled pass and in the torch code alike."""
    from egox_ros.core.geometry import voxel_kernel
    if not compiled:
        monkeypatch.setattr(voxel_kernel, "available", lambda: False)
    fusion = StaticCameraFusion(_config(mode="static", static_window_frames=3))
    for k, value in enumerate((10, 11, 11)):
        fusion.add(k, *_flat(2.0, (value, 250, 0)), SMALL, _pose())
    colors = fusion.cloud().colors
    assert len(colors) == SMALL.width * SMALL.height
    assert torch.equal(colors[0], torch.tensor([10, 250, 0], dtype=torch.uint8))
    assert torch.equal(colors, colors[:1].expand_as(colors))
    assert torch.equal(fusion.background_rgb()[0, 0], colors[0])


def test_static_cloud_leaves_out_where_the_average_mixes_surfaces():
    """The depth-edge filter runs again on the averaged depth (static_mean_edge_filter, as released): a box in the
    left half of one frame of two averages to 1.5 m beside 2 m, a step no single frame has; the 4 columns whose
    5-pixel window spans it leave the cloud."""
    cam_cols = torch.arange(SMALL.width)
    for mean_filter in (True, False):
        fusion = StaticCameraFusion(_config(mode="static", edge_window_px=5, static_mean_edge_filter=mean_filter))
        fusion.add(1, *_flat(2.0), SMALL, _pose())
        rgb, depth = _flat(2.0)
        depth[:, :32] = 1.0
        fusion.add(2, rgb, depth, SMALL, _pose())
        # Frame 2's own edge (columns 30-33) left frame 2: there the average is frame 1's 2 m, beside 1.5 m at 29.
        mean = fusion.background_depth()[0]
        assert torch.allclose(mean[:30], torch.tensor(1.5)) and torch.allclose(mean[30:], torch.tensor(2.0))
        cols = torch.bincount(_columns(fusion.cloud()), minlength=SMALL.width)
        mixed = (cam_cols >= 28) & (cam_cols <= 31)
        assert (cols[~mixed] == SMALL.height).all()
        assert (cols[mixed] == (0 if mean_filter else SMALL.height)).all()


def test_an_excluded_person_leaves_no_edge_around_them_where_the_depth_has_none():
    """Excluded pixels (the demonstrator, person_points 'none') are left out after the depth-edge filter has seen
    their depth, as the released tools apply their instance masks: a hand on a table takes only its own pixels out
    of the average, a person 1.5 m in front of a wall also the wall's pixels within the filter's reach (2 px). The
    filter on the average then takes 2 px more around what was never seen (the released tools' NaN mean)."""
    def box(r0, r1, c0, c1):
        m = torch.zeros((SMALL.height, SMALL.width), dtype=torch.bool)
        m[r0:r1, c0:c1] = True
        return m
    mask = box(20, 28, 30, 38)
    for person_depth_m, unseen, dropped in ((2.0, mask, box(18, 30, 28, 40)),            # the hand on the table
                                            (0.5, box(18, 30, 28, 40), box(16, 32, 26, 42))):
        fusion = StaticCameraFusion(_config(mode="static", edge_window_px=5))
        rgb, depth = _flat(2.0)
        depth[mask] = person_depth_m
        fusion.add(1, rgb, depth, SMALL, _pose(), excluded_mask=mask)
        assert torch.equal(torch.isnan(fusion.background_depth()), unseen)
        cloud = fusion.cloud()
        assert len(cloud) == SMALL.width * SMALL.height - int(dropped.sum())
        assert torch.allclose(cloud.points_world[:, 2], torch.tensor(2.0))     # nothing of the person


@needs_tum
def test_the_averaged_depth_filter_on_the_stride_grid_agrees_with_the_released_full_resolution_one():
    """The released tools average the full-resolution depth, filter the mean with the 5-px window and then take
    every 2nd pixel; the average here lives on the stride grid, filtered with the 3-stride-pixel window spanning
    the same pixels. 12 real TUM frames as if from one still camera, with a moving excluded block: the stride
    pixels that reach the cloud agree with the full-resolution computation (IoU >= 0.99; measured 0.996)."""
    cam = PinholeCamera(640, 480, FR1.fx, FR1.fy, FR1.cx, FR1.cy)     # undistorted: a point's pixel is exact
    cfg = _config(mode="static", stride=2, edge_window_px=5)
    fusion = StaticCameraFusion(cfg)
    depth_sum, count = torch.zeros((480, 640)), torch.zeros((480, 640))
    for k in range(12):
        rgb, depth, _ = _tum(2 * k)
        mask = torch.zeros(depth.shape, dtype=torch.bool)
        mask[100:300, 40 * k: 40 * k + 150] = True
        fusion.add(k, rgb, depth, cam, _pose(), excluded_mask=mask)
        ok = reliable_depth(depth, 5, 0.1, compiled=False) & (depth >= cfg.min_depth_m) & (depth <= cfg.max_depth_m)
        depth_sum += torch.where(ok & ~mask, depth, 0.0)
        count += (ok & ~mask).float()
    full_mean = torch.where(count > 0, depth_sum / count.clamp(min=1.0), torch.nan)
    released = reliable_depth(full_mean, 5, 0.1, stride=2, compiled=False)
    uv, _ = cam.project(fusion.cloud().points_world)
    grid = (uv / 2).round().to(torch.int64)
    ours = torch.zeros_like(released)
    ours[grid[:, 1], grid[:, 0]] = True
    assert len(fusion.cloud()) == int(ours.sum()) > 50_000       # one point per stride pixel
    iou = int((ours & released).sum()) / int((ours | released).sum())
    assert iou >= 0.99, iou


def test_static_detects_camera_motion():
    cfg = _config(mode="static", static_pose_tolerance_m=0.01, static_pose_tolerance_deg=0.5)
    fusion = StaticCameraFusion(cfg)
    fusion.add(1, *_flat(2.0), SMALL, _pose())
    fusion.add(2, *_flat(2.0), SMALL, _pose((0.005, 0, 0), yaw_deg=0.2))  # within tolerance
    before = fusion.cloud()
    with pytest.raises(CameraMovedError) as err:
        fusion.add(3, *_flat(2.0), SMALL, _pose((0.05, 0, 0)))
    assert err.value.translation_m == pytest.approx(0.05)
    with pytest.raises(CameraMovedError):
        fusion.add(3, *_flat(2.0), SMALL, _pose(yaw_deg=2.0))
    assert len(fusion) == 2 and fusion.cloud() is before  # nothing changed
    with pytest.raises(ValueError, match="intrinsics"):
        fusion.add(3, *_flat(2.0), PinholeCamera(64, 48, 61.0, 60.0, 31.5, 23.5), _pose())
    resetting = StaticCameraFusion(_config(mode="static", static_on_move="reset"))
    resetting.add(1, *_flat(2.0), SMALL, _pose())
    resetting.add(2, *_flat(2.0), SMALL, _pose((1.0, 0, 0)))
    assert resetting.moves == 1 and len(resetting) == 1
    assert float(resetting.cloud().points_world[:, 0].mean()) == pytest.approx(1.0, abs=1e-3)
    # remove_older_than clears only when every fused frame is older.
    assert resetting.remove_older_than(2) == 0 and len(resetting) == 1
    assert resetting.remove_older_than(3) == 1 and len(resetting.cloud()) == 0


def _same_cloud(a, b) -> bool:
    return torch.equal(a.points_world, b.points_world) and torch.equal(a.colors, b.colors)


def test_auto_fusion_averages_while_still_turns_to_voxels_on_a_move_and_back_when_still():
    """'auto' is the static average while the camera holds still, the voxel window from the frame that moves it on
    (built from the newest window_frames frames), and a new static average once the newest window_frames frames
    hold still again: each time the same cloud as the strategy it stands for, fed the same frames."""
    cfg = _config(mode="auto", window_frames=3, static_window_frames=8, static_pose_tolerance_m=0.01,
                  static_pose_tolerance_deg=0.5, voxel_size_m=0.01)
    fusion = make_fusion(cfg)
    person = torch.zeros((SMALL.height, SMALL.width), dtype=torch.bool)
    person[10:20, 10:20] = True
    poses = [_pose()] * 4 + [_pose((0.004, 0, 0))] + [_pose((0.05 * k, 0, 0), yaw_deg=k) for k in range(1, 4)] \
        + [_pose((0.3, 0.1, 0))] * 4
    frames = [(k, *_flat(2.0 + 0.01 * k, (10 * k, 100, 50)), SMALL, pose, person) for k, pose in enumerate(poses)]
    for k, frame in enumerate(frames):
        fusion.add(*frame)
        if k <= 4:         # still (frame 4 moved 4 mm, within the tolerance): the static average of every frame
            reference = StaticCameraFusion(cfg)
            for f in frames[: k + 1]:
                reference.add(*f)
            assert fusion.still and fusion.moves == 0 and len(fusion) == k + 1
        elif k <= 9:       # moving, and then still for fewer than window_frames frames: the voxel window
            reference = VoxelFusion(cfg)
            for f in frames[max(0, k - 3): k + 1]:
                reference.add(*f)
            assert not fusion.still and fusion.moves == 1 and len(fusion) == 3
        else:              # frames 8-10 held still: a new static average of them, and of the still frames after
            reference = StaticCameraFusion(cfg)
            for f in frames[8: k + 1]:
                reference.add(*f)
            assert fusion.still and fusion.moves == 1 and len(fusion) == k - 7
        assert _same_cloud(fusion.cloud(), reference.cloud()), k
        assert _same_cloud(fusion.frame_cloud(k), reference.frame_cloud(k)) and fusion.dynamic_points(k) == 100
    # A bad frame is refused as by every strategy (and is no move); new intrinsics count as a move.
    rgb, depth = _flat(2.0)
    with pytest.raises(ValueError, match="shape"):
        fusion.add(19, rgb[:-1], depth[:-1], SMALL, poses[-1])
    assert fusion.still and fusion.moves == 1
    fusion.add(20, *_flat(2.0), PinholeCamera(64, 48, 61.0, 60.0, 31.5, 23.5), poses[-1])
    assert not fusion.still and fusion.moves == 2
    with pytest.raises(ValueError, match="shape"):
        fusion.add(21, *_flat(2.0), PinholeCamera(32, 24, 30.0, 30.0, 15.5, 11.5), poses[-1])
    assert fusion.remove_older_than(100) == 3 and len(fusion) == 0 and not fusion._recent


# ----------------------------------------------------------------------------- moving camera: voxels


@needs_tum
def test_voxel_fusion_of_real_frames_renders_the_next_view_as_well_as_concatenation():
    i = 20
    rgb_t, depth_t, pose_t = _tum(i + 5)
    cfg = dict(voxel_size_m=0.005, window_frames=5)
    voxel = VoxelFusion(_config(**cfg), incremental=True)
    rebuild = VoxelFusion(_config(**cfg), incremental=False)
    concat = ConcatFusion(_config(mode="concat", **cfg))
    for k in range(i, i + 5):
        rgb, depth, pose = _tum(k)
        for fusion in (voxel, rebuild, concat):
            fusion.add(k, rgb, depth, FR1, pose)
    sliding = VoxelFusion(_config(**cfg), incremental=True)  # frames i-5..i-1 enter and leave again
    for k in range(i - 5, i + 5):
        rgb, depth, pose = _tum(k)
        sliding.add(k, rgb, depth, FR1, pose)
    fused, plain = voxel.cloud(), concat.cloud()
    assert len(sliding) == 5 and len(sliding.cloud()) == len(fused)
    assert torch.allclose(sliding.cloud().points_world, fused.points_world, atol=1e-4)
    assert torch.equal(sliding.cloud().colors, fused.colors)
    # Incremental grid (merge on add, subtract on eviction) equals a rebuild from the frames' records.
    assert len(fused) == len(rebuild.cloud())
    assert torch.allclose(fused.points_world, rebuild.cloud().points_world, atol=1e-5)
    assert torch.equal(fused.colors, rebuild.cloud().colors)
    views = {name: render_points(c, FR1, torch.from_numpy(pose_t), point_radius_px=2)
             for name, c in (("voxel", fused), ("concat", plain))}
    psnr = {name: _masked_psnr(v.rgb, rgb_t, v.mask) for name, v in views.items()}
    both = views["voxel"].mask & torch.isfinite(depth_t)
    depth_err = float((views["voxel"].depth_m - depth_t)[both].abs().median())
    print(f"voxel {len(fused)} pts coverage {views['voxel'].coverage:.3f} PSNR {psnr['voxel']:.2f} dB; "
          f"concat {len(plain)} pts coverage {views['concat'].coverage:.3f} PSNR {psnr['concat']:.2f} dB; "
          f"depth err {depth_err * 1000:.1f} mm")
    # Measured: voxel 139k points, coverage 0.813, 25.9 dB; concatenation 1.23M points, 0.816, 24.8 dB.
    assert len(fused) < len(plain) / 5
    assert views["voxel"].coverage > views["concat"].coverage - 0.01
    assert views["voxel"].coverage > 0.75
    assert psnr["voxel"] >= psnr["concat"]
    assert depth_err < 0.005


@pytest.mark.parametrize("incremental", [True, False])
def test_voxel_fusion_averages_and_window_eviction_removes_old_frames(incremental):
    cfg = _config(voxel_size_m=0.05, window_frames=3)
    fusion = VoxelFusion(cfg, incremental=incremental)
    fusion.add(1, *_flat(2.0, (100, 0, 0)), SMALL, _pose())
    fusion.add(2, *_flat(2.0, (200, 50, 0)), SMALL, _pose())
    one_frame = VoxelFusion(cfg)
    one_frame.add(1, *_flat(2.0), SMALL, _pose())
    assert len(fusion.cloud()) == len(one_frame.cloud())  # same surface, same voxels
    assert (fusion.cloud().colors == torch.tensor([150, 25, 0], dtype=torch.uint8)).all()
    fusion.add(3, *_flat(5.0, (0, 0, 255)), SMALL, _pose((10.0, 0, 0)))  # elsewhere
    fusion.add(4, *_flat(5.0, (0, 0, 255)), SMALL, _pose((10.0, 0, 0)))  # frame 1 leaves (window 3)
    assert len(fusion) == 3
    near = fusion.cloud().points_world[:, 0] < 5.0
    assert (fusion.cloud().colors[near] == torch.tensor([200, 50, 0], dtype=torch.uint8)).all()
    assert fusion.remove_older_than(3) == 1  # frame 2 leaves: nothing of the first surface is left
    assert (fusion.cloud().points_world[:, 0] > 5.0).all()
    assert (fusion.cloud().colors == torch.tensor([0, 0, 255], dtype=torch.uint8)).all()
    assert fusion.num_records == len(fusion.cloud()) * 2
    assert fusion.remove_older_than(10) == 2 and len(fusion) == 0 and len(fusion.cloud()) == 0


@pytest.mark.parametrize("incremental", [True, False])
def test_voxel_fusion_memory_is_bounded_for_a_long_window(incremental):
    cfg = _config(voxel_size_m=0.05, window_frames=1000, max_points=5000)
    fusion = VoxelFusion(cfg, incremental=incremental)
    for k in range(60):
        fusion.add(k, *_flat(2.0), SMALL, _pose((0.3 * k, 0, 0), yaw_deg=k))  # every frame sees new space
        assert fusion.num_records <= cfg.max_points and len(fusion.cloud()) <= cfg.max_points
    assert 1 < len(fusion) < 60  # the oldest frames left early
    assert fusion.nbytes() < 5000 * 40 * 3
    big = VoxelFusion(_config(voxel_size_m=0.001, max_points=500))
    big.add(0, *_flat(2.0), SMALL, _pose())  # one frame with more voxels than allowed is thinned
    assert len(big.cloud()) == 500


def test_moving_fusion_keeps_dynamic_points_out_of_the_grid():
    fusion = VoxelFusion(_config(voxel_size_m=0.02))
    rgb, depth = _flat(2.0)
    mask = torch.zeros(depth.shape, dtype=torch.bool)
    mask[:10, :10] = True
    depth[mask] = 1.0
    fusion.add(5, rgb, depth, SMALL, _pose(), dynamic_mask=mask)
    assert (fusion.cloud().points_world[:, 2] > 1.9).all()
    frame = fusion.frame_cloud(5)
    assert int((frame.points_world[:, 2] < 1.5).sum()) == 100
    fusion.add(6, *_flat(2.0), SMALL, _pose())
    fusion.remove_older_than(6)
    assert len(fusion.frame_cloud(5)) == len(fusion.cloud())


def test_concat_fusion_is_bounded():
    fusion = ConcatFusion(_config(mode="concat", window_frames=100, max_points=SMALL.width * SMALL.height * 3))
    for k in range(10):
        fusion.add(k, *_flat(2.0), SMALL, _pose())
    assert len(fusion) == 3 and len(fusion.cloud()) == SMALL.width * SMALL.height * 3


# ----------------------------------------------------------------------------- depth-edge filter, point budget

def test_reliable_depth_drops_pixels_at_depth_edges_and_next_to_holes():
    depth = torch.full((20, 30), 2.0)
    depth[:, 15:] = 3.0                       # a step from 2 m to 3 m between columns 14 and 15
    depth[5, 5] = float("nan")                # a hole
    keep = reliable_depth(depth, 5, 0.1)
    # (3 - 2) / mean >= 0.1 within 2 px of the step; away from it, flat: kept.
    assert not keep[:, 13:17].any() and keep[10, :13].all() and keep[10, 17:].all()
    assert not keep[3:8, 3:8].any()           # the hole and its 5x5 neighbourhood (min is 0 there)
    assert keep[10, 10] and keep[0, 0]        # image corners of a flat area stay (max - min = 0)
    # A gentle slope passes: 1 % change over the window.
    slope = torch.linspace(2.0, 2.2, 30).repeat(20, 1)
    assert reliable_depth(slope, 5, 0.1).all()
    # The strided mask is the full mask subsampled; window 0 / 1 only drops missing readings.
    np.testing.assert_array_equal(reliable_depth(depth, 5, 0.1, stride=2).numpy(), keep[::2, ::2].numpy())
    assert int((~reliable_depth(depth, 0, 0.1)).sum()) == 1
    with pytest.raises(ValueError, match="odd"):
        FusionConfig(edge_window_px=4)


def test_the_edge_filter_removes_the_curtain_of_stray_points_along_an_outline():
    # A box 1 m in front of a wall 3 m away. Depth sensors (and depth models) blur the outline: a few pixels
    # read in between. Lifted, they hang in the air between box and wall; the filter removes them.
    depth = np.full((48, 64), 3.0, np.float32)
    depth[14:34, 20:44] = 2.0
    depth[14:34, 19] = depth[14:34, 44] = 2.5       # mixed pixels on the outline
    rgb = np.zeros((48, 64, 3), np.uint8)
    for window, expect_stray in ((0, True), (5, False)):
        fusion = make_fusion(_config(mode="concat", edge_window_px=window))
        fusion.add(1, rgb, depth, SMALL, _pose())
        z = fusion.cloud().points_world[:, 2]
        stray = bool(((z > 2.2) & (z < 2.8)).any())
        assert stray == expect_stray, window


@pytest.mark.parametrize("mode", ["moving", "concat"])
def test_frames_evicted_by_the_point_budget_are_counted_and_max_points_0_follows_the_window(mode):
    rgb = np.zeros((48, 64, 3), np.uint8)
    depth = np.full((48, 64), 2.0, np.float32)
    tight = make_fusion(_config(mode=mode, window_frames=8, max_points=3 * 48 * 64))
    follows = make_fusion(_config(mode=mode, window_frames=8, max_points=0))
    for k in range(10):
        for fusion in (tight, follows):
            fusion.add(k, rgb, depth, SMALL, _pose(t=(0.01 * k, 0.0, 0.0)))
    assert len(tight) < 8 and tight.evicted_by_budget > 0
    assert len(follows) == 8 and follows.evicted_by_budget == 0


def test_window_max_equals_max_pool2d():
    # The depth-edge filter's separable window max gives exactly max_pool2d's values (border clipped).
    from egox_ros.core.geometry.fusion import _window_max
    generator = torch.Generator().manual_seed(0)
    for shape in [(48, 64), (7, 9), (31, 17)]:
        for k in (1, 3, 5, 7):
            for stride in (1, 2, 3):
                d = torch.rand(shape, generator=generator)
                expected = torch.nn.functional.max_pool2d(d[None, None], k, stride=stride, padding=k // 2)[0, 0]
                assert torch.equal(_window_max(d, k, stride), expected), (shape, k, stride)


def test_voxel_reduce_kernel_matches_torch():
    # The compiled run-sum pass (core/geometry/voxel_kernel.py, numba) against torch.unique + index_add_: keys with many
    # duplicates in random order, including negative-offset keys and a single-key input. Keys, counts and colour
    # sums exact; offset sums within float32 rounding (2e-6 m: summed in another order).
    from egox_ros.core.geometry import voxel_kernel
    from egox_ros.core.geometry.fusion import _Voxels
    assert voxel_kernel.available()
    g = torch.Generator().manual_seed(0)
    for n, distinct in ((50_000, 3_000), (20_000, 19_000), (1, 1)):
        keys = torch.randint(-(1 << 40), 1 << 40, (distinct,), generator=g)[torch.randint(0, distinct, (n,), generator=g)]
        offset = torch.rand((n, 3), generator=g) * 0.005
        color = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.int32)
        count = torch.randint(1, 4, (n,), generator=g, dtype=torch.int32)
        fast, ref = _Voxels.reduce(keys, offset, color, count), _Voxels.reduce_torch(keys, offset, color, count)
        assert torch.equal(fast.keys, ref.keys) and torch.equal(fast.count, ref.count)
        assert torch.equal(fast.color_sum, ref.color_sum)
        assert torch.allclose(fast.offset_sum, ref.offset_sum, rtol=0, atol=2e-6)
        assert bool((fast.keys[1:] > fast.keys[:-1]).all())


@needs_tum
@pytest.mark.parametrize("voxel_size_m,far_pose", [(0.005, False), (0.013, False), (0.005, True)])
def test_compiled_lifting_gives_the_records_the_torch_code_gives(voxel_size_m, far_pose):
    """A real TUM frame lifted and binned by the compiled pass (voxel_kernel.lift_voxel_records) against the torch
    code (_voxelize of the lifted cloud), before the reduce: the same keys in the same order, offsets and colours
    exact (the same float32 operations); with the camera 5.2 km away half the voxels leave the key range (+-2^20
    voxels) and are dropped by both. With a person mask, as the moving fusion's static pixels."""
    from egox_ros.core.geometry import voxel_kernel
    from egox_ros.core.geometry.fusion import _AXIS_BITS, _AXIS_OFFSET, _FrameInput, _voxelize
    rgb, depth, pose = _tum(3)
    mask = torch.zeros(depth.shape, dtype=torch.bool)
    mask[100:300, 200:400] = True
    frame = _FrameInput(_config(), "cpu", rgb, depth, FR1, pose, mask)
    if far_pose:      # half the points beyond the key range's edge at +2^20 voxels
        pose = pose.copy()
        pose[0, 3] += _AXIS_OFFSET * voxel_size_m - float(frame.lift(frame.static_valid).points_world[:, 0].median())
        frame = _FrameInput(_config(), "cpu", rgb, depth, FR1, pose, mask)
    keys, offset, colors = voxel_kernel.lift_voxel_records(frame.depth, frame.rays, frame.static_valid, frame.rgb,
                                                           frame.pose, voxel_size_m, _AXIS_BITS, _AXIS_OFFSET)
    cloud = frame.lift(frame.static_valid)
    p = cloud.points_world
    ijk = torch.floor(p / voxel_size_m)
    inside = ((ijk >= -_AXIS_OFFSET) & (ijk < _AXIS_OFFSET)).all(dim=1)
    assert 1000 < len(keys) == int(inside.sum()) and (not far_pose or len(keys) < len(cloud))
    p, ijk = p[inside], ijk[inside]
    q = ijk.to(torch.int64) + _AXIS_OFFSET
    assert torch.equal(keys, (q[:, 0] << (2 * _AXIS_BITS)) | (q[:, 1] << _AXIS_BITS) | q[:, 2])
    assert torch.equal(offset, p - ijk * voxel_size_m)
    assert torch.equal(colors, cloud.colors[inside].to(torch.int32))
    fast, ref = frame.voxel_records(frame.static_valid, voxel_size_m), _voxelize(cloud, voxel_size_m)
    assert torch.equal(fast.keys, ref.keys) and torch.equal(fast.count, ref.count)
    assert torch.equal(fast.color_sum, ref.color_sum) and torch.equal(fast.offset_sum, ref.offset_sum)


@needs_tum
def test_compiled_static_average_and_cloud_equal_the_torch_code(monkeypatch):
    """The static running average and its cloud by the compiled passes (voxel_kernel.static_average_update,
    static_cloud) against the torch code (numba switched off for the reference): 12 real TUM frames at one pose, a
    person mask that moves, an average capped at 5 frames (the exponential part) and pixels needing 2 readings:
    state, points and colours exactly equal (the same float32 operations)."""
    from egox_ros.core.geometry import voxel_kernel
    cfg = _config(mode="static", stride=2, static_window_frames=5, static_min_observations=2, edge_window_px=5)
    inputs = []
    for k in range(12):
        rgb, depth, _ = _tum(2 * k)
        mask = torch.zeros(depth.shape, dtype=torch.bool)
        mask[100:300, 40 * k: 40 * k + 150] = True
        inputs.append((k, rgb, depth, FR1, _tum(0)[2], mask))

    def run():
        fusion = StaticCameraFusion(cfg)
        for frame in inputs:
            fusion.add(*frame)
        return fusion, fusion.cloud()
    assert voxel_kernel.available()
    fast, fast_cloud = run()
    monkeypatch.setattr(voxel_kernel, "available", lambda: False)
    ref, ref_cloud = run()
    for a, b in ((fast._depth, ref._depth), (fast._color, ref._color), (fast._weight, ref._weight)):
        assert torch.equal(a, b)
    assert 0 < int((ref._weight == 5).sum()) and 0 < int((ref._weight == 1).sum())   # capped, and seen once only
    assert 10_000 < len(ref_cloud) < int((ref._weight > 0).sum())
    assert _same_cloud(fast_cloud, ref_cloud)
