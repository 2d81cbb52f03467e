"""`egox tools egoexo4d`: a released-EgoX-style clip folder -> a bag the node can replay.

No Ego-Exo4D data here (it is licensed): each test builds a small clip folder with the released layout (meta.json,
videos/CLIP/{exo,ego_GT,ego_Prior}.mp4, depth_maps/CLIP/000NN.npy) from synthetic images, converts it and reads
the bag back.
"""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egox_ros.core.geometry.cameras import rotated_90_pose
from egox_ros.core.io.image_codec import decode_depth_m, decode_rgb
from egox_ros.tools import egoexo4d

cv2 = pytest.importorskip("cv2")

CLIP = "lab_test_1_100_104"
EXO_W, EXO_H, DEPTH_W = 96, 48, 108        # the released ratio: depth 6 px wider on each side than the video
EGO = 32
N_DEPTH, N_VIDEO = 3, 4                    # one more video frame than depth maps, as released
K_BIG = [[1200.0, 0.0, 1920.0], [0.0, 1200.0, 1080.0], [0.0, 0.0, 1.0]]
EXO_E = [[0.0, -1.0, 0.0, 0.5], [0.0, 0.0, -1.0, 1.2], [1.0, 0.0, 0.0, 2.0]]     # world -> exo, world z up


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ego_extrinsic(i: int) -> list[list[float]]:
    r = np.array(EXO_E)[:, :3] @ _rot_z(0.1 * i)
    return np.concatenate([r, np.array([[0.1 * i], [0.2], [-0.3]])], axis=1).tolist()


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, (w, h))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


def _flat(value: tuple[int, int, int], h: int, w: int) -> np.ndarray:
    return np.broadcast_to(np.array(value, np.uint8), (h, w, 3)).copy()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A released-style example folder with one clip: flat-coloured frames (they survive mp4 within a few grey
    levels), a depth ramp whose columns say where the crop was taken."""
    root = tmp_path / "egoexo4D"
    videos, depths = root / "videos" / CLIP, root / "depth_maps" / CLIP
    videos.mkdir(parents=True)
    depths.mkdir(parents=True)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (120, 120, 120)]
    _write_video(videos / "exo.mp4", [_flat(c, EXO_H, EXO_W) for c in colours])
    _write_video(videos / "ego_GT.mp4", [_flat(c[::-1], EGO, EGO) for c in colours])
    _write_video(videos / "ego_Prior.mp4", [_flat((c[1], c[2], c[0]), EGO, EGO) for c in colours])
    for i in range(N_DEPTH):
        depth = np.tile(1.0 + 0.01 * np.arange(DEPTH_W, dtype=np.float32), (EXO_H, 1)) + i
        np.save(depths / f"{i:05d}.npy", depth)
    meta = {"test_datasets": [{
        "exo_path": f"./example/egoexo4D/videos/{CLIP}/exo.mp4",
        "ego_gt_path": f"./example/egoexo4D/videos/{CLIP}/ego_GT.mp4",
        "ego_prior_path": f"./example/egoexo4D/videos/{CLIP}/ego_Prior.mp4",
        "prompt": "", "camera_intrinsics": K_BIG, "camera_extrinsics": EXO_E,
        "ego_intrinsics": [[150.0, 0.0, 255.5], [0.0, 150.0, 255.5], [0.0, 0.0, 1.0]],
        "ego_extrinsics": [_ego_extrinsic(i) for i in range(N_DEPTH)],
    }]}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def _read(bag: Path) -> dict[str, list]:
    from rosbags.highlevel import AnyReader
    out: dict[str, list] = {}
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return out


def _pose(t) -> np.ndarray:
    from egox_ros.core.geometry.transforms import quat_to_matrix
    r = t.transform.rotation
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix([r.x, r.y, r.z, r.w])
    m[:3, 3] = [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z]
    return m


def _egox(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "egox_ros.cli", "tools", "egoexo4d", *args], capture_output=True,
                          text=True, timeout=120)


def test_clip_becomes_a_bag_with_the_released_geometry(root: Path, tmp_path: Path):
    out = tmp_path / "bag"
    result = _egox(str(root), "-o", str(out))
    assert result.returncode == 0, result.stderr
    msgs = _read(out)
    # one frame per depth map (the video's extra last frame is not used), every topic per frame
    for topic in (egoexo4d.TOPIC_EXO_IMAGE, egoexo4d.TOPIC_EXO_INFO, egoexo4d.TOPIC_EXO_DEPTH, egoexo4d.TOPIC_TF,
                  egoexo4d.TOPIC_GT_IMAGE, egoexo4d.TOPIC_GT_INFO, egoexo4d.TOPIC_PRIOR_IMAGE,
                  egoexo4d.TOPIC_PRIOR_INFO):
        assert len(msgs[topic]) == N_DEPTH, topic
    assert len(msgs[egoexo4d.TOPIC_TF_STATIC]) == 1
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs[egoexo4d.TOPIC_EXO_IMAGE]]
    assert np.allclose(np.diff(stamps), 1 / 30, atol=1e-6)      # 30 fps, whatever the mp4 header says (20)

    # exo camera: K at 3840x2160 -> fx' = fx * 224 / cy at 448 px (here 48 px), the released camera (the released
    # priors were lifted with it), times 1.42 (the fit to the videos: the default); the centre of the video
    info = msgs[egoexo4d.TOPIC_EXO_INFO][0]
    assert (info.width, info.height) == (EXO_W, EXO_H)
    f = 1200.0 * 24 / 1080 * 1.42
    assert np.allclose(info.k, [f, 0, 48.0, 0, f, 24.0, 0, 0, 1], atol=1e-9)
    # depth: 32FC1 metres, the centre crop [:, 6:102] of the released map
    for i, msg in enumerate(msgs[egoexo4d.TOPIC_EXO_DEPTH]):
        assert msg.encoding == "32FC1"
        depth = decode_depth_m(msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian)
        expected = 1.0 + 0.01 * np.arange(6, 6 + EXO_W, dtype=np.float32) + i
        assert np.allclose(depth, expected[None, :], atol=1e-6)
    # images: flat colours within mp4's loss (a few grey levels)
    exo = msgs[egoexo4d.TOPIC_EXO_IMAGE][1]
    rgb = decode_rgb(exo.data, exo.encoding, exo.height, exo.width, exo.step, exo.is_bigendian)
    assert np.abs(rgb.reshape(-1, 3).mean(axis=0) - (40, 200, 40)).max() < 8
    gt = msgs[egoexo4d.TOPIC_GT_IMAGE][0]
    assert np.abs(decode_rgb(gt.data, gt.encoding, gt.height, gt.width, gt.step, gt.is_bigendian)
                  .reshape(-1, 3).mean(axis=0) - (40, 40, 200)).max() < 8
    prior = msgs[egoexo4d.TOPIC_PRIOR_IMAGE][0]
    assert np.abs(decode_rgb(prior.data, prior.encoding, prior.height, prior.width, prior.step, prior.is_bigendian)
                  .reshape(-1, 3).mean(axis=0) - (40, 40, 200)).max() < 8

    # TF: static world -> exo = inverse of the world -> camera extrinsic; head = the ego camera turned upright
    static = msgs[egoexo4d.TOPIC_TF_STATIC][0].transforms[0]
    assert (static.header.frame_id, static.child_frame_id) == ("world", "exo_camera_optical")
    e = np.eye(4)
    e[:3] = EXO_E
    assert np.allclose(_pose(static), np.linalg.inv(e), atol=1e-9)
    for i, tf in enumerate(msgs[egoexo4d.TOPIC_TF]):
        head = tf.transforms[0]
        assert (head.header.frame_id, head.child_frame_id) == ("world", "head")
        native = np.eye(4)
        native[:3] = _ego_extrinsic(i)
        world_T_head = _pose(head)
        assert np.allclose(world_T_head, rotated_90_pose(np.linalg.inv(native)), atol=1e-9)
        # upright x = -native y, upright y = native x (the released renderer's turn)
        native_pose = np.linalg.inv(native)
        assert np.allclose(world_T_head[:3, 0], -native_pose[:3, 1], atol=1e-9)
        assert np.allclose(world_T_head[:3, 1], native_pose[:3, 0], atol=1e-9)
    # ground truth and released prior: the released priors' Aria camera (an Aria RGB calibration at 2880 px) scaled
    # to the ego video's 32 px, upright, frame 'head' (test_the_ego_camera_draws_where_the_released_renderer_does
    # pins where it projects)
    for topic in (egoexo4d.TOPIC_GT_INFO, egoexo4d.TOPIC_PRIOR_INFO):
        info = msgs[topic][0]
        assert info.header.frame_id == "head" and (info.width, info.height) == (EGO, EGO)
        assert info.distortion_model == "fisheye_rad_tan_thin_prism" and len(info.d) == 12
        s = EGO / 2880
        assert np.allclose([info.k[0], info.k[2], info.k[5]], [1220.592182729911 * s, EGO - 1464.618192267255 * s,
                                                               1442.370245962395 * s], atol=1e-9)
    assert "-p ego_camera.model:=aria" in result.stdout and "-p ego_camera.fx:=" in result.stdout


def test_the_bag_passes_the_replay_pre_check(root: Path, tmp_path: Path):
    """Everything the node needs is in the bag: exo image, info, depth, exo TF, head TF (egox replay --dry-run)."""
    out = tmp_path / "bag"
    # the clip's own folder; the released exo camera
    assert _egox(str(root / "videos" / CLIP), "-o", str(out), "--exo-focal-scale", "1").returncode == 0
    info = _read(out)[egoexo4d.TOPIC_EXO_INFO][0]
    assert info.k[0] == pytest.approx(1200.0 * 24 / 1080, abs=1e-9)
    result = subprocess.run([sys.executable, "-m", "egox_ros.cli", "replay", str(out), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_refusals_are_one_line_and_exit_2(root: Path, tmp_path: Path):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _egox(str(root), "-o", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"                                  # nothing overwritten
    result = _egox(str(root), "--clip", "nope", "-o", str(tmp_path / "b2"))
    assert result.returncode == 2 and "'nope' is not in" in result.stderr
    for f in (root / "depth_maps" / CLIP).glob("*.npy"):
        f.unlink()
    result = _egox(str(root), "-o", str(tmp_path / "b3"))
    assert result.returncode == 2 and "no depth maps" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()


def _released_pixels(points_world: np.ndarray, w2c_native: np.ndarray, f: float, cx: float, cy: float,
                     coeffs, size: int) -> np.ndarray:
    """Where the released renderer (EgoX-EgoPriorRenderer scripts/render_vipe_pointcloud.py, render_points_fisheye)
    draws world points in its size x size prior, written from its code and PyTorch3D's conventions, float64:
    R = R_cv^T C, T = C^T t_cv with C = diag(-1, -1, 1) @ [[0, 1, 0], [-1, 0, 0], [0, 0, 1]] (its two coordinate
    changes) and X_view = X_world R + T (PyTorch3D's row vectors); FishEyeCameras' projection (radial in theta^2 ..
    theta^12, then tangential 2 (x.p) x + |x|^2 p, then thin prism) times 2 f / W plus (2 cx / W - 1, 1 - 2 cy / H);
    then the rasteriser's NDC, +x left and +y up, pixel i's centre at 1 - (2 i + 1) / W. Returns (N, 2) (col, row),
    pixel centres at integers."""
    c = np.diag([-1.0, -1.0, 1.0]) @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    view = points_world @ (w2c_native[:3, :3].T @ c) + c.T @ w2c_native[:3, 3]
    ab = view[:, :2] / view[:, 2:]
    r = np.linalg.norm(ab, axis=1)
    th = np.arctan(r)
    radial = 1.0 + sum(k * th ** (2 * (i + 1)) for i, k in enumerate(coeffs[:6]))
    xr = (radial * th / r)[:, None] * ab
    r2 = (xr ** 2).sum(axis=1)
    p, s = np.asarray(coeffs[6:8]), np.asarray(coeffs[8:12])
    uv = xr + (2.0 * xr @ p)[:, None] * xr + r2[:, None] * p
    uv[:, 0] += s[0] * r2 + s[1] * r2 ** 2
    uv[:, 1] += s[2] * r2 + s[3] * r2 ** 2
    ndc = uv * (2.0 * f / size) + np.array([2.0 * cx / size - 1.0, 1.0 - 2.0 * cy / size])
    return (size * (1.0 - ndc) - 1.0) / 2.0


def test_the_ego_camera_draws_where_the_released_renderer_does(root: Path):
    """load_clip's head pose + ego camera, splatted by render_points_soft as the prior generator does, cover exactly
    the pixels the released renderer gives each point (within the 5 px disc of its projection), for its native Aria
    calibration (f, cx, cy at 2880 px scaled to the prior, 12 coefficients)."""
    import torch

    from egox_ros.core.geometry.render import PointCloud, render_points_soft

    calibration = egoexo4d.RELEASED_PRIOR_ARIA_CALIBRATION

    rng = np.random.default_rng(3)
    for size in (EGO, 448):
        clip = egoexo4d.load_clip(root, CLIP)
        camera = clip.ego_camera if size == EGO else egoexo4d.released_prior_camera(448)
        assert (camera.width, camera.height) == (size, size)
        f, cx, cy = (v * size / 2880 for v in calibration[:3])
        for i in range(N_DEPTH):
            w2c = np.eye(4)
            w2c[:3] = _ego_extrinsic(i)
            # points in front of the native camera, up to about 50 degrees off its axis, into the world
            z = rng.uniform(1.0, 3.0, 400)
            native = np.stack([rng.uniform(-1.2, 1.2, 400) * z, rng.uniform(-1.2, 1.2, 400) * z, z], axis=1)
            world = native @ np.linalg.inv(w2c)[:3, :3].T + np.linalg.inv(w2c)[:3, 3]
            expected = _released_pixels(world, w2c, f, cx, cy, calibration[3:], size)
            head = clip.world_T_head[i]
            cam_pts = (world - head[:3, 3]) @ head[:3, :3]
            uv, valid = camera.project(torch.as_tensor(cam_pts, dtype=torch.float32))
            assert valid.all()
            # render_points_soft draws a point at its projection minus 0.5 px (PyTorch3D's pixel centres)
            assert np.abs(uv.numpy().astype(np.float64) - 0.5 - expected).max() < 2e-3
        # the whole path at the released size: well-separated points, each disc exactly where the released one is
        if size == 448:
            grid = np.stack(np.meshgrid(np.linspace(-0.9, 0.9, 6), np.linspace(-0.9, 0.9, 6)), -1).reshape(-1, 2)
            native = np.concatenate([grid * 2.0, np.full((len(grid), 1), 2.0)], axis=1)
            w2c = np.eye(4)
            w2c[:3] = _ego_extrinsic(1)
            world = native @ np.linalg.inv(w2c)[:3, :3].T + np.linalg.inv(w2c)[:3, 3]
            cloud = PointCloud(torch.as_tensor(world, dtype=torch.float32),
                               torch.full((len(world), 3), 200, dtype=torch.uint8))
            view = render_points_soft(cloud, camera, torch.as_tensor(clip.world_T_head[1]), radius_px=5.0)
            expected = _released_pixels(world, w2c, f, cx, cy, calibration[3:], 448)
            rows, cols = np.mgrid[0:448, 0:448]
            index = view.point_index.numpy()
            for k, (col, row) in enumerate(expected):
                disc = (cols - col) ** 2 + (rows - row) ** 2 < 25.0
                assert disc.sum() > 60 and np.count_nonzero(disc != (index == k)) <= 1, k


def test_the_printed_parameters_give_the_node_that_camera():
    """The `-p ego_camera.*` the converter prints, read as the node reads parameters, build the same camera."""
    from egox_ros.core.runtime.pipeline import ego_camera_from_config
    from egox_ros.ros.config import parameter_sections
    from egox_ros.ros.params import configs_from_parameters, load_parameters

    camera = egoexo4d.released_prior_camera()
    overrides = egoexo4d.ego_camera_parameters(camera)
    assert all(" " not in p for p in overrides)          # each one shell word, as printed after -p
    configs, warnings = configs_from_parameters(load_parameters(None, overrides), parameter_sections())
    assert warnings == []
    built = ego_camera_from_config(configs["ego_camera"])
    assert type(built) is type(camera) and (built.width, built.height) == (448, 448)
    assert np.allclose([built.fx, built.fy, built.cx, built.cy], [camera.fx, camera.fy, camera.cx, camera.cy],
                       atol=1e-12)
    assert np.allclose(built.distortion, camera.distortion, atol=1e-15)


def test_the_exo_camera_lifts_the_depth_where_the_released_vipe_path_does(root: Path):
    """load_clip's cropped depth, lifted with its exo camera and pose, gives the points the released renderer builds
    from the full depth map: ViPE's pinhole iproj ((u - cx) / fx, (v - cy) / fy) * depth at pixel indices u, v of the
    W x H map, with ViPE's GTIntrinsicsProcessor intrinsics (fx * (H / 2) / cy of meta's K, c = (W / 2, H / 2)), moved
    to the world with the inverse of meta's exo extrinsic (the released camera: --exo-focal-scale 1)."""
    import torch

    from egox_ros.core.geometry.render import lift_depth

    clip = egoexo4d.load_clip(root, CLIP, exo_focal_scale=1.0)
    full = np.load(root / "depth_maps" / CLIP / "00000.npy").astype(np.float64)
    h, w = full.shape
    f = K_BIG[0][0] * (h / 2) / K_BIG[1][2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    cam = np.stack([(u - w / 2) / f * full, (v - h / 2) / f * full, full], axis=-1)[:, 6:6 + EXO_W].reshape(-1, 3)
    e = np.eye(4)
    e[:3] = EXO_E
    expected = cam @ np.linalg.inv(e)[:3, :3].T + np.linalg.inv(e)[:3, 3]
    cloud = lift_depth(torch.as_tensor(clip.exo_rgb[0]), torch.as_tensor(clip.depth_m[0]), clip.exo_camera,
                       torch.as_tensor(clip.world_T_exo), stride=1)
    assert len(cloud) == EXO_W * EXO_H
    assert np.abs(cloud.points_world.numpy() - expected).max() < 1e-5


def test_a_prior_against_a_reference_prior_mask_iou_and_psnr_on_shared_pixels():
    """The acceptance metrics against the released prior: masks (the reference's: any channel above 10, an mp4's
    black) and PSNR on the pixels both cover."""
    from egox_ros.core.io.evaluation import compare_with_reference_prior
    prior = np.zeros((4, 5, 3), np.uint8)
    mask = np.zeros((4, 5), bool)
    mask[:, :3] = True                                   # ours: columns 0-2
    prior[mask] = (100, 100, 100)
    reference = np.full((4, 5, 3), 7, np.uint8)          # "black" as an mp4 keeps it
    reference[:, 1:4] = (110, 100, 100)                  # theirs: columns 1-3, one channel 10 off
    result = compare_with_reference_prior(prior, mask, reference)
    assert result["reference_prior_mask_iou"] == pytest.approx(8 / 16)     # columns 1-2 of 0-3
    assert result["reference_prior_psnr_db"] == pytest.approx(10 * np.log10(255.0 ** 2 / (100 / 3)), abs=1e-3)
    none = compare_with_reference_prior(prior, np.zeros_like(mask), np.zeros_like(reference))
    assert none == {"reference_prior_mask_iou": None, "reference_prior_psnr_db": None}
    with pytest.raises(ValueError, match="differ in size"):
        compare_with_reference_prior(prior, mask, reference[:, :4])
    # The report, given a reference of another size (the node's ego camera is not the released one), says so per
    # frame instead of comparing (the summary carries the first such note).
    from egox_ros.ros.offline.report import _evaluate
    frame = _evaluate({"prior": prior, "mask": mask, "ego": prior, "reference": reference[:, :4]}, 0, None, None,
                      None, {})
    assert "reference_prior_mask_iou" not in frame and frame["reference_prior_note"].startswith(
        "reference prior 4x4 is not the prior's size 5x4")


def test_egox_process_reports_the_prior_against_the_released_prior(root: Path, tmp_path: Path):
    """A converted clip carries the released prior: `egox process` with the printed ego camera compares its prior
    with it frame by frame (mask IoU, PSNR on shared pixels) and scores the released prior against the real
    video too. The synthetic released prior covers every pixel, so the IoU is our coverage; its colours are the
    real video's channels turned, so frames 1 and 2 differ from it by 160 grey levels in two channels (5.81 dB)."""
    bag = tmp_path / "bag"
    assert _egox(str(root), "-o", str(bag), "--exo-focal-scale", "1").returncode == 0
    camera = [a for p in egoexo4d.ego_camera_parameters(egoexo4d.released_prior_camera(EGO)) for a in ("-p", p)]
    result = subprocess.run([sys.executable, "-m", "egox_ros.cli", "process", str(bag), "-o", str(tmp_path / "out"),
                             "-p", "person.source:=none", *camera], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    summary, frames = metrics["summary"], metrics["frames"]
    assert summary["reference_prior_topic"] == egoexo4d.TOPIC_PRIOR_IMAGE and len(frames) == N_DEPTH
    assert all(f["coverage"] > 0.05 for f in frames)
    for f in frames:
        assert f["reference_prior_mask_iou"] == pytest.approx(f["coverage"], abs=1e-4)
        assert 0 < f["reference_prior_psnr_db"] < 60
    assert summary["mean_reference_prior_mask_iou"] == pytest.approx(summary["mean_coverage"], abs=1e-4)
    for f in frames[1:]:
        assert f["reference_prior_masked_psnr_db"] == pytest.approx(10 * np.log10(255.0 ** 2 / (2 * 160 ** 2 / 3)),
                                                                    abs=0.2)


def test_bench_prior_runs_every_clip_of_a_folder_and_leaves_nothing_behind(root: Path, tmp_path: Path):
    """`egox bench prior --egoexo4d DIR`, the acceptance check in one command: each clip converted to a bag in a
    temporary folder and run through egox process with the released priors' ego camera and the -p given, the
    comparison read from its metrics (the synthetic released prior covers every pixel, so the IoU is our coverage),
    one table row per clip; nothing is written next to the data, and the temporary bags are gone afterwards."""
    from egox_ros.bench.prior import markdown_egoexo4d
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    before = sorted(root.rglob("*"))
    run = subprocess.run([sys.executable, "-m", "egox_ros.cli", "bench", "prior", "--egoexo4d", str(root), "--json",
                          "-p", "person.source:=none"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(scratch)})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert sorted(root.rglob("*")) == before
    assert not list(scratch.glob("egox-bench-prior-*"))        # (torch may keep its own cache there)
    (row,) = result["clips"]
    assert row["clip"] == CLIP and row["frames"] == row["published"] == N_DEPTH and row["note"] is None
    assert row["coverage"] > 0.05 and row["mask_iou"] == pytest.approx(row["coverage"], abs=1e-4)
    assert 0 < row["shared_psnr_db"] < 60 and row["masked_psnr_db"] is not None
    assert row["released_masked_psnr_db"] >= 5.6        # 5.81 dB from frame 1 on (see the test above)
    assert result["exo_focal_scale"] == 1.0 and result["overrides"] == ["person.source:=none"]
    assert result["mean"]["mask_iou"] == pytest.approx(row["mask_iou"], abs=1e-4)
    table = markdown_egoexo4d(result)
    assert f"| {CLIP} | {N_DEPTH} of {N_DEPTH} | {row['mask_iou']:.3f} |" in table and "`person.source:=none`" in table
    iou_missed = f"{CLIP} mask IoU {row['mask_iou']:.3f}, target >= 0.850"
    assert (iou_missed in table) == (row["mask_iou"] < 0.85) and "Targets: " in table


def test_bench_demonstrator_on_a_folder_without_people_names_every_missed_target(root: Path):
    """`egox bench demonstrator --egoexo4d` on the synthetic folder (flat colours: nobody to find): every frame
    counted without a head, with and without depth, and the table says which targets the clip misses."""
    from egox_ros.bench.demonstrator import markdown_egoexo4d, run_egoexo4d
    result = run_egoexo4d(root, 1.0)
    assert [(r["clip"], r["depth"]) for r in result["clips"]] == [(CLIP, True), (CLIP, False)]
    for r in result["clips"]:
        assert r["frames"] == N_DEPTH and r["with_head"] == 0 and r["position_error_m"]["median"] is None
    # The frames twice side by side, the recorded head as no hint / on either copy: nobody masked anywhere.
    assert [(r["clip"], r["hint"]) for r in result["pairs"]] == [(CLIP, None), (CLIP, "left"), (CLIP, "right")]
    assert all(r["frames"] == N_DEPTH and r["mask_on_left_head_frames"] == r["mask_on_right_head_frames"] == 0
               for r in result["pairs"])
    table = markdown_egoexo4d(result)
    assert f"{CLIP} frames with a head 0.00, target >= 0.90" in table
    assert f"{CLIP} position median [m] -, target <= 0.150" in table
    assert f"| {CLIP} | right | 0 of {N_DEPTH} | 0 of {N_DEPTH} |" in table


def test_bench_egoexo4d_runs_only_the_clips_named(root: Path):
    """`--clip NAME`: of a folder with two clips only the one named runs (the held-out clips of a full released
    folder stay unopened); with no name every clip runs, in meta.json's order; a name meta.json does not list is
    a ClipError naming those it does."""
    from egox_ros.bench.demonstrator import run_egoexo4d
    other = "lab_test_2_100_104"
    for part in ("videos", "depth_maps"):
        shutil.copytree(root / part / CLIP, root / part / other)
    meta = json.loads((root / "meta.json").read_text())
    entry = {k: (v.replace(CLIP, other) if isinstance(v, str) else v) for k, v in meta["test_datasets"][0].items()}
    meta["test_datasets"].append(entry)
    (root / "meta.json").write_text(json.dumps(meta))
    assert egoexo4d.selected_clips(root) == [CLIP, other]
    assert egoexo4d.selected_clips(root, [other, CLIP, other]) == [CLIP, other]
    result = run_egoexo4d(root, 1.0, clips=[other])
    assert {r["clip"] for r in result["clips"]} == {r["clip"] for r in result["pairs"]} == {other}
    with pytest.raises(egoexo4d.ClipError, match=f"'sfu_basketball' is not in .*({CLIP}, {other})"):
        egoexo4d.selected_clips(root, ["sfu_basketball"])


def test_a_shrunk_exo_image_is_what_a_shorter_lens_sees_from_the_same_place(root: Path):
    """`--exo-shrink`: the exo image and depth shrunk about the principal point, the camera's focal length with
    them; a point of the scene is drawn where the new camera projects it, with its own depth, and the border the
    smaller image leaves has no depth reading."""
    clip = egoexo4d.load_clip(root, CLIP)
    small = egoexo4d.shrunk_exo(clip, 0.5)
    cam, new = clip.exo_camera, small.exo_camera
    assert len(small.exo_rgb) == len(clip.exo_rgb) and small.exo_rgb[0].shape == clip.exo_rgb[0].shape
    assert small.depth_m[0].shape == clip.depth_m[0].shape
    assert new.fx == pytest.approx(cam.fx / 2) and new.fy == pytest.approx(cam.fy / 2)
    assert abs(new.cx - cam.cx) < 1.0 and abs(new.cy - cam.cy) < 1.0       # the principal point stays put
    depth, shrunk = clip.depth_m[1], small.depth_m[1]
    for u, v in ((10, 5), (50, 24), (90, 40)):          # pixels of the original image
        z = float(depth[v, u])
        x, y = (u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z     # the scene point there, exo frame
        u2, v2 = new.fx * x / z + new.cx, new.fy * y / z + new.cy
        # the depth ramp rises 0.01 m per original column; nearest-neighbour shrinking keeps one of two columns
        assert shrunk[int(round(v2)), int(round(u2))] == pytest.approx(z, abs=0.011)
    rows, cols = np.nonzero(shrunk > 0)
    assert shrunk[0].max() == 0 and shrunk[:, 0].max() == 0                # the border: no reading
    assert cols.max() - cols.min() + 1 == EXO_W // 2 and rows.max() - rows.min() + 1 == EXO_H // 2
    np.testing.assert_allclose(small.exo_rgb[2][0, 0], clip.exo_rgb[2][0, 0], atol=2)   # edge repeated, no black
    with pytest.raises(egoexo4d.ClipError, match=r"in \(0, 1\]"):
        egoexo4d.shrunk_exo(clip, 1.5)


def test_bench_egoexo4d_refusals_are_one_line(root: Path, tmp_path: Path):
    """A folder that is not a released one, a focal scale that is not positive, a bad -p value, a shrink factor
    above 1 and a clip the folder does not have: one line on stderr and exit 2, no traceback (the folder is checked
    before any work)."""
    from conftest import run_concurrently
    not_released, zero_focal, bad_param, big_shrink, unknown_clip = run_concurrently([
        ["bench", "prior", "--egoexo4d", tmp_path, "--json"],
        ["bench", "demonstrator", "--egoexo4d", root, "--exo-focal-scale", "0", "--json"],
        ["bench", "prior", "--egoexo4d", root, "--json", "-p", "fusion.stride:=abc"],
        ["bench", "demonstrator", "--egoexo4d", root, "--exo-shrink", "1.5", "--json"],
        ["bench", "prior", "--egoexo4d", root, "--clip", "no_such_clip", "--json"]])
    for result, prefix, words in ((not_released, "egox bench prior: error: ", "has no meta.json"),
                                  (zero_focal, "egox bench demonstrator: error: ", "must be positive"),
                                  (bad_param, "egox bench prior: error: ", "'fusion.stride' must be integer"),
                                  (big_shrink, "egox bench demonstrator: error: ", "--exo-shrink must be in"),
                                  (unknown_clip, "egox bench prior: error: ", "'no_such_clip' is not in")):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(prefix), result.stderr[-2000:]
        assert words in lines[0] and result.stdout == ""
