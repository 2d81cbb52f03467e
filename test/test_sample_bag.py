"""Checks of the committed sample bag sample/tum_fr1_rpy and of its builder."""

import copy
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from egox_ros.core.io.image_codec import decode_depth_m, decode_rgb
from egox_ros.tools import make_sample_bag as msb

BAG = Path(__file__).resolve().parents[1] / "sample" / "tum_fr1_rpy"
HEAD_OFFSET = 10
N_EXO = 50
W, H = 320, 240

TOPIC_TYPES = {
    "/tf": "tf2_msgs/msg/TFMessage",
    "/exo/camera_info": "sensor_msgs/msg/CameraInfo",
    "/exo/depth/image_raw": "sensor_msgs/msg/Image",
    "/exo/image_raw": "sensor_msgs/msg/Image",
    "/ego/ground_truth/camera_info": "sensor_msgs/msg/CameraInfo",
    "/ego/ground_truth/image_raw": "sensor_msgs/msg/Image",
}

pytestmark = pytest.mark.skipif(not (BAG / "metadata.yaml").is_file(), reason="sample bag not present")


def _read_raw(path: Path):
    """[(topic, msgtype, timestamp, raw bytes)] in bag order."""
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        return [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in reader.messages()]


# Poses in the sample come from float64 lerp/slerp of the motion-capture poses; their last bit depends on the
# CPU's libm and SIMD paths (another x86 CPU gave quaternions 1e-16 apart). Content that matters is far coarser:
# 1e-9 (a nanometre, a nano-radian) is seven orders of magnitude above that rounding and far below any effect on
# a rendered pixel. Integers, strings and image bytes (integer arithmetic only) must be identical.
FLOAT_ATOL = 1e-9


def _read_decoded(path: Path):
    """[(topic, msgtype, log time, deserialised message)] in bag order."""
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        return [(c.topic, c.msgtype, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def _assert_same_content(a, b, where: str) -> None:
    """Field by field: floats within FLOAT_ATOL, everything else equal."""
    if dataclasses.is_dataclass(a):
        assert type(a).__name__ == type(b).__name__, where
        for f in dataclasses.fields(a):
            _assert_same_content(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=0, atol=FLOAT_ATOL, err_msg=where)
        else:
            assert np.array_equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_content(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float) and abs(a - b) <= FLOAT_ATOL, f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_content_comparison_can_fail():
    """The determinism check below is only as good as this comparison: it must see a changed pose or pixel."""
    decoded = _read_decoded(BAG)
    tf = next(m[3] for m in decoded if m[0] == "/tf")
    moved = copy.deepcopy(tf)
    moved.transforms[0].transform.rotation.x += 1e-6
    _assert_same_content(tf, copy.deepcopy(tf), "same")
    with pytest.raises(AssertionError):
        _assert_same_content(moved, tf, "moved")
    img = next(m[3] for m in decoded if m[0] == "/exo/image_raw")
    changed = copy.deepcopy(img)
    changed.data[0] ^= 1
    with pytest.raises(AssertionError):
        _assert_same_content(changed, img, "pixel")


@pytest.fixture(scope="module")
def frames():
    """{log_time: {topic: deserialised message}} plus the raw list."""
    from rosbags.highlevel import AnyReader

    out = defaultdict(dict)
    topics = {}
    with AnyReader([BAG]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        for conn, t, raw in reader.messages():
            assert conn.topic not in out[t], f"two {conn.topic} messages at {t}"
            out[t][conn.topic] = reader.deserialize(raw, conn.msgtype)
    return topics, dict(out)


def _tf(msg, child):
    (tr,) = [x for x in msg.transforms if x.child_frame_id == child]
    return tr


def _pose(tr):
    v, q = tr.transform.translation, tr.transform.rotation
    return np.array([v.x, v.y, v.z]), np.array([q.x, q.y, q.z, q.w])


def test_size_under_limit():
    size = sum(p.stat().st_size for p in BAG.iterdir())
    assert size <= 20_000_000, f"sample bag is {size / 1e6:.2f} MB"


def test_topics_and_counts(frames):
    topics, by_time = frames
    assert topics == TOPIC_TYPES
    assert len(by_time) == N_EXO
    for t, msgs in by_time.items():
        assert set(msgs) == set(TOPIC_TYPES), t


def test_write_order_puts_exo_image_last():
    raw = _read_raw(BAG)
    first = [topic for topic, _, t, _ in raw if t == raw[0][2]]
    assert first == [
        "/tf",
        "/exo/camera_info",
        "/exo/depth/image_raw",
        "/ego/ground_truth/camera_info",
        "/ego/ground_truth/image_raw",
        "/exo/image_raw",
    ]


def test_stamps_equal_log_time(frames):
    _, by_time = frames
    for t, msgs in by_time.items():
        for topic, msg in msgs.items():
            headers = [x.header for x in msg.transforms] if topic == "/tf" else [msg.header]
            for h in headers:
                assert h.stamp.sec * 1_000_000_000 + h.stamp.nanosec == t, topic
    stamps = sorted(by_time)
    assert all(30e6 < b - a < 40e6 for a, b in zip(stamps, stamps[1:]))  # 30 Hz


def test_frames_sizes_encodings(frames):
    _, by_time = frames
    msgs = next(iter(by_time.values()))
    tf = msgs["/tf"]
    assert {(x.header.frame_id, x.child_frame_id) for x in tf.transforms} == {
        ("world", "exo_camera_optical"),
        ("world", "head"),
    }
    expect = {
        "/exo/image_raw": ("exo_camera_optical", "rgb8", W * 3),
        "/exo/depth/image_raw": ("exo_camera_optical", "16UC1", W * 2),
        "/ego/ground_truth/image_raw": ("head", "rgb8", W * 3),
    }
    for topic, (frame_id, encoding, step) in expect.items():
        m = msgs[topic]
        assert (m.header.frame_id, m.encoding, m.width, m.height, m.step) == (frame_id, encoding, W, H, step)
        assert m.is_bigendian == 0 and len(m.data) == step * H
    for topic, frame_id in (("/exo/camera_info", "exo_camera_optical"), ("/ego/ground_truth/camera_info", "head")):
        info = msgs[topic]
        assert info.header.frame_id == frame_id and (info.width, info.height) == (W, H)
        assert info.distortion_model == "plumb_bob"
        np.testing.assert_allclose(info.d, [0.2624, -0.9531, -0.0054, 0.0026, 1.1633])
        fx, fy = 517.3 * 0.5, 516.5 * 0.5
        cx, cy = (318.6 + 0.5) * 0.5 - 0.5, (255.3 + 0.5) * 0.5 - 0.5
        np.testing.assert_allclose(info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
        np.testing.assert_allclose(info.r, np.eye(3).ravel())
        np.testing.assert_allclose(info.p, [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0])


def test_images_decode(frames):
    _, by_time = frames
    for t in sorted(by_time)[:: N_EXO // 5]:
        msgs = by_time[t]
        d = msgs["/exo/depth/image_raw"]
        depth = decode_depth_m(d.data, d.encoding, d.height, d.width, d.step, bool(d.is_bigendian))
        assert depth.shape == (H, W) and depth.dtype == np.float32
        valid = np.isfinite(depth)
        assert 0.5 < valid.mean() <= 1.0
        assert 0.5 < float(np.median(depth[valid])) < 5.0
        assert np.nanmin(depth) > 0.2 and np.nanmax(depth) < 12.0
        for topic in ("/exo/image_raw", "/ego/ground_truth/image_raw"):
            m = msgs[topic]
            rgb = decode_rgb(m.data, m.encoding, m.height, m.width, m.step, bool(m.is_bigendian))
            assert rgb.shape == (H, W, 3) and 20 < rgb.mean() < 235 and rgb.std() > 10


def test_head_is_exo_pose_offset_frames_later(frames):
    _, by_time = frames
    stamps = sorted(by_time)
    for i in range(N_EXO - HEAD_OFFSET):
        head = _pose(_tf(by_time[stamps[i]]["/tf"], "head"))
        exo_later = _pose(_tf(by_time[stamps[i + HEAD_OFFSET]]["/tf"], "exo_camera_optical"))
        np.testing.assert_array_equal(head[0], exo_later[0])
        np.testing.assert_array_equal(head[1], exo_later[1])
        # ... and the ground-truth image is the image recorded at that later pose.
        gt = by_time[stamps[i]]["/ego/ground_truth/image_raw"]
        exo_img = by_time[stamps[i + HEAD_OFFSET]]["/exo/image_raw"]
        assert np.array_equal(gt.data, exo_img.data)
    # Quaternions are unit length and the head actually moves away from the exo camera.
    t0, q0 = _pose(_tf(by_time[stamps[0]]["/tf"], "exo_camera_optical"))
    th, qh = _pose(_tf(by_time[stamps[0]]["/tf"], "head"))
    assert abs(np.linalg.norm(q0) - 1) < 1e-9 and abs(np.linalg.norm(qh) - 1) < 1e-9
    assert abs(float(np.dot(q0, qh))) < 0.9999


def test_readable_with_mcap_ros2():
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (mcap_file,) = BAG.glob("*.mcap")
    counts = defaultdict(int)
    with mcap_file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, decoded in reader.iter_decoded_messages():
            counts[channel.topic] += 1
            if channel.topic == "/exo/image_raw":
                assert decoded.header.stamp.sec * 1_000_000_000 + decoded.header.stamp.nanosec == message.log_time
                assert len(decoded.data) == W * H * 3
    assert counts == {topic: N_EXO for topic in TOPIC_TYPES}


def test_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "bag"
    out.mkdir()
    assert msb.main(["-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err


@pytest.mark.skipif(not (msb.DEFAULT_SOURCE / "associations.txt").is_file(), reason="TUM source data not present")
def test_builder_is_deterministic(tmp_path):
    out = tmp_path / BAG.name
    assert msb.main(["-o", str(out)]) == 0
    rebuilt, committed = _read_decoded(out), _read_decoded(BAG)
    assert [m[:3] for m in rebuilt] == [m[:3] for m in committed]  # same topics, types, log times, order
    for (topic, _, t, a), (_, _, _, b) in zip(rebuilt, committed):
        _assert_same_content(a, b, f"{topic}@{t}")
    # A second run with --force replaces the bag and gives the same files.
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert msb.main(["-o", str(out), "--force"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
