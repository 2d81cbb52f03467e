"""Live use with a fixed camera, over real DDS: the exo camera's pose given as node parameters (no TF publisher for
it), and `egox record` recording the node's outputs into a bag (no `ros2 bag record` in the PyPI setup).

Scene as in test_node.py (a uniformly coloured plane 2 m in front of the exo camera), with the camera somewhere else
in the world and turned: the head TF is at the same pose, so the prior sees the plane."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import transforms3d
from egox_msgs.msg import ClipMetadata
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from conftest import LoggedProcess, NodeProcess, wait_until
from test_node import SCENE, SEC, depth_msg, image_msg, info_msg, ns_of, stamp

# The camera as a driver such as realsense2_camera publishes it: camera_link (REP 103: x forward, z up) -> the
# optical frame on /tf_static; the node gets world -> camera_link from its parameters (1.2 m up, pitched down 0.3 rad,
# turned 0.5 rad) and chains the two.
LINK_XYZ_M = [1.0, 2.0, 1.2]
LINK_RPY_RAD = [0.0, 0.3, 0.5]
LINK_TO_OPTICAL_RPY = [-np.pi / 2, 0.0, -np.pi / 2]


def matrix(xyz, rpy) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = transforms3d.euler.euler2mat(*rpy, axes="sxyz")
    m[:3, 3] = xyz
    return m


WORLD_T_OPTICAL = matrix(LINK_XYZ_M, LINK_RPY_RAD) @ matrix([0.0, 0.0, 0.0], LINK_TO_OPTICAL_RPY)
EXO_XYZ_M = list(WORLD_T_OPTICAL[:3, 3])
EXO_QUAT_XYZW = np.roll(transforms3d.quaternions.mat2quat(WORLD_T_OPTICAL[:3, :3]), -1)
T0 = 200 * SEC
STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)


def head_tf(ns) -> TFMessage:
    """world -> head at the exo camera's pose."""
    t = TransformStamped()
    t.header.stamp, t.header.frame_id, t.child_frame_id = stamp(ns), "world", "head"
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = EXO_XYZ_M
    r = t.transform.rotation
    r.x, r.y, r.z, r.w = map(float, EXO_QUAT_XYZW)
    return TFMessage(transforms=[t])


def link_to_optical_tf() -> TFMessage:
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = "camera_link", "exo_optical"
    r = t.transform.rotation
    r.x, r.y, r.z, r.w = map(float, np.roll(transforms3d.euler.euler2quat(*LINK_TO_OPTICAL_RPY, axes="sxyz"), -1))
    return TFMessage(transforms=[t])


def transform_values(t) -> tuple[list[float], list[float]]:
    return ([t.translation.x, t.translation.y, t.translation.z],
            [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])


def recorded_count(log: Path, topic: str) -> int:
    """The newest count of `topic` in egox record's live status lines."""
    found = re.findall(rf"so far; .*?{re.escape(topic)} (\d+)", log.read_text())
    return int(found[-1]) if found else 0


def test_fixed_exo_pose_from_parameters_and_egox_record(peer, tmp_path):
    node = NodeProcess(tmp_path, params={
        **SCENE, "sync.timeout_s": 4.0, "qos.input_reliability": "reliable", "qos.input_depth": 100,
        "inputs.exo_pose_source": "parameters", "inputs.exo_pose_frame": "camera_link", "inputs.exo_xyz_m": LINK_XYZ_M,
        "inputs.exo_rpy_rad": LINK_RPY_RAD})
    out_bag = tmp_path / "recorded"
    recording = LoggedProcess([sys.executable, "-m", "egox_ros.cli", "record", "-o", str(out_bag)],
                              tmp_path / "record.log", stop_timeout_s=60)
    recorder = recording.proc
    try:
        pub_image, pub_info = peer.publisher(Image, "/exo/image_raw"), peer.publisher(CameraInfo, "/exo/camera_info")
        pub_depth, pub_tf = peer.publisher(Image, "/exo/depth/image_raw"), peer.publisher(TFMessage, "/tf")
        pub_static = peer.publisher(TFMessage, "/tf_static", STATIC_QOS)
        pub_static.publish(link_to_optical_tf())     # the camera driver's part of the tree (latched)
        peer.collect(ClipMetadata, "/ego/clip_metadata")
        peer.collect(TFMessage, "/tf_static", STATIC_QOS)
        # Both the node and the recorder are listening before anything is sent (the recorder subscribes to the
        # node's outputs once they are in the graph).
        wait_until(lambda: node.proc.poll() is not None or recorder.poll() is not None or (
            all(p.get_subscription_count() > 0 for p in (pub_image, pub_info, pub_depth, pub_tf))
            and peer.node.count_subscribers("/ego/image_raw") >= 1             # egox record
            and peer.node.count_subscribers("/ego/clip_metadata") >= 2),      # egox record and the peer
            60, "the node and egox record to subscribe")
        assert node.proc.poll() is None, node.log()
        assert recorder.poll() is None, (tmp_path / "record.log").read_text()

        sent, published = [], []

        def frame_out():
            """Send one frame (no world -> camera TF: the node has it from its parameters); True once 3 frames have
            come out published. Paced by the node: the next frame only once the last one is accounted for."""
            metas = peer.messages("/ego/clip_metadata")
            bad = [m.reason for m in metas if m.status != ClipMetadata.STATUS_OK]
            assert not bad, f"frames dropped: {bad}\n{node.log()[-3000:]}"
            published[:] = [ns_of(s) for m in metas for s in m.source_stamps]
            if len(published) >= 3:
                return True
            if set(sent) <= set(published):
                ns = T0 + len(sent) * SEC // 10
                sent.append(ns)
                pub_info.publish(info_msg())
                pub_tf.publish(head_tf(ns))
                pub_depth.publish(depth_msg(ns))
                pub_image.publish(image_msg(ns))
            return False
        wait_until(frame_out, 90, "3 published frames", interval_s=0.3)

        static = wait_until(lambda: [t for m in peer.messages("/tf_static") for t in m.transforms
                                     if t.child_frame_id == "camera_link"], 10, "world -> camera_link on /tf_static")
        assert static[0].header.frame_id == "world"
        xyz, quat = transform_values(static[0].transform)
        np.testing.assert_allclose(xyz, LINK_XYZ_M, atol=1e-9)
        np.testing.assert_allclose(quat, np.roll(transforms3d.euler.euler2quat(*LINK_RPY_RAD, axes="sxyz"), -1),
                                   atol=1e-9)
        coverage = [c for m in peer.messages("/ego/clip_metadata") for c in m.prior_coverage]
        assert min(coverage) > 0.05, coverage      # the plane is in view: the camera pose was applied
        # egox record's live count has every clip metadata the peer got (and so their images, sent before them)
        wanted = len(peer.messages("/ego/clip_metadata"))
        wait_until(lambda: recorded_count(tmp_path / "record.log", "/ego/clip_metadata") >= wanted, 30,
                   f"egox record to count {wanted} clip metadata messages")
        # and both latched parts of the tree (the node's and the driver's): a late joiner gets them when it matches,
        # which under load can come after the frames
        wait_until(lambda: recorded_count(tmp_path / "record.log", "/tf_static") >= 2, 30,
                   "egox record to count both /tf_static messages")
    finally:
        code = recording.stop()
        node.stop()
    log = recording.log()
    assert code == 0, log
    assert "Traceback" not in log, log

    from rosbags.highlevel import AnyReader
    from egox_ros.ros.offline.plan import typestore_with_egox_msgs
    recorded: dict[str, list] = {}
    with AnyReader([out_bag], default_typestore=typestore_with_egox_msgs()) as reader:
        for conn, log_ns, raw in reader.messages():
            recorded.setdefault(conn.topic, []).append((log_ns, reader.deserialize(raw, conn.msgtype)))
    image_stamps = {ns_of(m.header.stamp) for _, m in recorded["/ego/image_raw"]}
    assert set(published) <= image_stamps, (sorted(published), sorted(image_stamps))
    assert set(published) <= {ns_of(s) for _, m in recorded["/ego/clip_metadata"] for s in m.source_stamps}
    assert {"/ego/camera_info", "/ego/prior/image_raw", "/ego/prior/mask", "/tf", "/egox/progress"} <= set(recorded)
    static = {t.child_frame_id: t for _, m in recorded["/tf_static"] for t in m.transforms}
    assert static["camera_link"].header.frame_id == "world", static           # latched, recorded too, both parts
    assert static["exo_optical"].header.frame_id == "camera_link", static
    np.testing.assert_allclose(transform_values(static["camera_link"].transform)[0], LINK_XYZ_M, atol=1e-9)
    # logged at receive time (wall clock), as ros2 bag record does
    log_times = [t for t, _ in recorded["/ego/image_raw"]]
    assert log_times == sorted(log_times) and abs(log_times[-1] / SEC - time.time()) < 600


def test_egox_record_never_writes_over_anything(tmp_path):
    """An existing output path, a relative topic, a bad duration: one line on stderr, exit 2, nothing touched."""
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    for args, says in ([["-o", str(existing)], "exists; egox record never writes over anything"],
                       [["-o", str(tmp_path / "new"), "ego/image_raw"], "topics must be absolute"],
                       [["-o", str(tmp_path / "new"), "--duration", "0"], "--duration must be positive"]):
        done = subprocess.run([sys.executable, "-m", "egox_ros.cli", "record", *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and not (tmp_path / "new").exists()


def test_egox_record_waits_for_a_publisher_to_choose_the_qos_and_so_gets_latched_messages(peer, tmp_path):
    """A topic the graph first knows from a subscriber (the node's TF listener on /tf_static, say) is not subscribed
    until a publisher is seen: subscribed then as transient local, it gets what the latched publisher sent before the
    recorder matched (subscribed volatile from the subscriber alone, it never would: the race CI once hit)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String
    from egox_ros.ros.dds import BackgroundSpin
    from egox_ros.ros.record import Recorder
    topic = "/egox_test/latched"
    peer.collect(String, topic, STATIC_QOS)                 # a subscriber only, as a TF listener on /tf_static
    node = rclpy.create_node("egox_test_recorder")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = BackgroundSpin(executor, name="egox-test-recorder")
    recorder = Recorder(node, tmp_path / "bag", [topic], log=lambda line: None)
    try:
        wait_until(lambda: topic in dict(node.get_topic_names_and_types()), 20, f"{topic} in the recorder's graph")
        recorder.discover()
        assert topic not in recorder.subscriptions        # known from a subscriber only: no QoS to follow yet
        pub = peer.publisher(String, topic, STATIC_QOS)
        pub.publish(String(data="sent before the recorder matched"))
        wait_until(lambda: recorder.discover() or topic in recorder.subscriptions, 20, "the recorder to subscribe")
        assert recorder.subscriptions[topic].qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
        wait_until(lambda: recorder.bag.counts_now().get(topic, 0) >= 1, 20, "the latched message to be recorded")
    finally:
        spin.stop()
        counts = recorder.close()
        node.destroy_node()
    assert counts == {topic: 1}, counts
