"""`egox tools egoexo4d`: a released-EgoX-style clip folder -> a bag the node can replay.

No Ego-Exo4D data here (it is licensed): each test builds a small clip folder with the released layout (meta.json,
videos/CLIP/{exo,ego_GT,ego_Prior}.mp4, depth_maps/CLIP/000NN.npy) from synthetic images, converts it and reads
the bag back.
"""
from __future__ import annotations

import json
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

    # exo camera: K at 3840x2160 -> fx' = fx * 224 / cy at 448 px (here 48 px), times 1.42 (the fit to the
    # videos); the centre of the video
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
    # ground truth and released prior: the Aria camera scaled from 512 to the ego video's 32 px, frame 'head'
    gt_info = msgs[egoexo4d.TOPIC_GT_INFO][0]
    assert gt_info.header.frame_id == "head" and (gt_info.width, gt_info.height) == (EGO, EGO)
    assert gt_info.distortion_model == "fisheye_rad_tan_thin_prism" and len(gt_info.d) == 12
    assert np.allclose([gt_info.k[0], gt_info.k[2], gt_info.k[5]], [150.0 / 16, 15.5, 15.5], atol=1e-9)


def test_the_bag_passes_the_replay_pre_check(root: Path, tmp_path: Path):
    """Everything the node needs is in the bag: exo image, info, depth, exo TF, head TF (egox replay --dry-run)."""
    out = tmp_path / "bag"
    # the clip's own folder; the released camera as it is
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
