"""The egox node in its own process, driven over real DDS from the test process.

Scene: the exo camera sits at the world origin looking along +z at a uniformly coloured plane 2 m away; the head is at
the same pose, so the prior shows the plane in the middle of the (wider) ego view and nothing at its corners.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from egox_msgs.msg import ClipMetadata, NodeProgress
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.duration import Duration
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Empty
from tf2_msgs.msg import TFMessage

from conftest import NodeProcess, wait_until
from egox_ros.core.io.compressed_image import encode_compressed_depth, encode_compressed_rgb
from egox_ros.ros.conversions import image_to_depth_m, image_to_rgb
from egox_ros.ros.node import PROGRESS_QOS

W, H, F = 160, 120, 100.0  # 77 x 62 degrees; points land 2.2 ego pixels apart, closed by 3x3 splats
SCENE = {"fusion.stride": 1}  # lift every pixel of these small images (the default, 2, leaves holes at 4.4 px)
# Tests send bursts of frames: an input queue deeper than any burst, so the node sees every message.
# sync.timeout_s: how long a frame may wait for its inputs; generous, since on a loaded 2-core CI machine one input
# has been seen to arrive 2 s late (input_delay_max_ms in the failure message tells transport from a busy node).
RIG_PARAMS = {**SCENE, "sync.timeout_s": 4.0, "qos.input_reliability": "reliable", "qos.input_depth": 100,
              "diagnostics.period_s": 0.2}
COLOR = (200, 50, 30)
SEC = 1_000_000_000
T0 = 100 * SEC


def stamp(ns):
    from builtin_interfaces.msg import Time
    return Time(sec=ns // SEC, nanosec=ns % SEC)


def ns_of(t) -> int:
    return t.sec * SEC + t.nanosec


def image_msg(ns, encoding="rgb8", color=COLOR, width=W, height=H, step=None, data=None, frame="exo_optical"):
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}[encoding] \
        if encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16") else 3
    order = {"rgb8": color, "bgr8": color[::-1], "rgba8": (*color, 255), "bgra8": (*color[::-1], 255),
             "mono8": (color[0],), "mono16": (color[0] * 256,)}.get(encoding, color)
    dtype = np.uint16 if encoding == "mono16" else np.uint8
    pixels = np.broadcast_to(np.array(order, dtype), (height, width, channels)).copy()
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=step if step is not None else width * channels * pixels.itemsize)
    msg.header.stamp, msg.header.frame_id = stamp(ns), frame
    msg.data = data if data is not None else pixels.tobytes()
    return msg


def depth_msg(ns, depth_m=2.0, encoding="16UC1", width=W, height=H):
    if encoding == "16UC1":
        pixels = np.full((height, width), int(round(depth_m * 1000)), np.uint16)
    else:
        pixels = np.full((height, width), depth_m, np.float32)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=width * pixels.itemsize)
    msg.header.stamp, msg.header.frame_id = stamp(ns), "exo_optical"
    msg.data = pixels.tobytes()
    return msg


def compressed(msg: Image, container: str = "png") -> CompressedImage:
    """The same image as image_transport's `compressed` publisher sends it (PNG: lossless)."""
    out = CompressedImage()
    out.header = msg.header
    data, out.format = encode_compressed_rgb(image_to_rgb(msg), container)
    out.data = data
    return out


def compressed_depth(msg: Image) -> CompressedImage:
    """The same depth image as image_transport's `compressedDepth` publisher sends it."""
    out = CompressedImage()
    out.header = msg.header
    data, out.format = encode_compressed_depth(image_to_depth_m(msg), msg.encoding)
    out.data = data
    return out


def info_msg(width=W, height=H):
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5)
    msg.header.frame_id = "exo_optical"
    msg.k = [F, 0.0, (width - 1) / 2, 0.0, F, (height - 1) / 2, 0.0, 0.0, 1.0]
    return msg


def tf_msg(ns, parent, child, xyz=(0.0, 0.0, 0.0)):
    t = TransformStamped()
    t.header.stamp, t.header.frame_id, t.child_frame_id = stamp(ns), parent, child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
    t.transform.rotation.w = 1.0
    return TFMessage(transforms=[t])


class Rig:
    """Publishers and collectors around one running node."""

    def __init__(self, peer, node: NodeProcess, depth=True, pose_topic=False, clip_frames=1, compressed=False):
        """compressed: send the exo image as CompressedImage (PNG) and depth as compressedDepth, on image_transport's
        topics (the node needs inputs.exo_transport / inputs.depth_transport set to match)."""
        self.peer, self.node, self.clip_frames, self.compressed = peer, node, clip_frames, compressed
        if compressed:
            self.pub_image = peer.publisher(CompressedImage, "/exo/image_raw/compressed")
            self.pub_depth = peer.publisher(CompressedImage, "/exo/depth/image_raw/compressedDepth") if depth else None
        else:
            self.pub_image = peer.publisher(Image, "/exo/image_raw")
            self.pub_depth = peer.publisher(Image, "/exo/depth/image_raw") if depth else None
        self.pub_info = peer.publisher(CameraInfo, "/exo/camera_info")
        self.pub_tf = peer.publisher(TFMessage, "/tf")
        self.pub_pose = peer.publisher(PoseStamped, "/head/pose") if pose_topic else None
        self.pub_flush = peer.publisher(Empty, "/egox/flush")
        subs = [peer.collect(typ, topic) for topic, typ in [
            ("/ego/image_raw", Image), ("/ego/camera_info", CameraInfo), ("/ego/prior/image_raw", Image),
            ("/ego/prior/mask", Image), ("/ego/prior/camera_info", CameraInfo), ("/ego/clip_metadata", ClipMetadata),
            ("/diagnostics", DiagnosticArray)]]
        peer.collect(TFMessage, "/tf")
        peer.collect(NodeProgress, "/egox/progress", PROGRESS_QOS)
        pubs = [self.pub_image, self.pub_info, self.pub_tf, self.pub_flush] + [p for p in (self.pub_depth,
                                                                                          self.pub_pose) if p]
        # Both directions must match before anything is sent, or the first messages can be lost.
        wait_until(lambda: node.proc.poll() is not None or (all(p.get_subscription_count() > 0 for p in pubs)
                                                            and all(s.get_publisher_count() > 0 for s in subs)),
                   30, "the node to subscribe to every input and publish every output")
        assert node.proc.poll() is None, node.log()
        wait_until(lambda: self.peer.messages("/egox/progress"), 30, "the node's latched progress")
        self._handshake()

    def _handshake(self):
        """Matching is only visible from our side: a VOLATILE reader that matches our writer late skips what was
        sent before. Send warm-up frames (stamps long before the tests' T0), a clip's worth at a time, until one
        comes out, then take the node's counts as the baseline that tests compare against."""
        def warmed_up():
            if self.peer.messages("/egox/progress")[-1].frames_received:
                # The node takes our frames (it may still be loading its generator): wait, do not pile up more.
                return wait_until(lambda: self.peer.messages("/ego/clip_metadata"), 0.5, "", raise_on_timeout=False)
            for _ in range(self.clip_frames):
                ns = SEC + self._warmups * SEC // 100
                self._warmups += 1
                if self.pub_pose:
                    pose = PoseStamped()
                    pose.header.stamp, pose.header.frame_id = stamp(ns), "world"
                    pose.pose.orientation.w = 1.0
                    self.pub_pose.publish(pose)
                self.send_frame(ns, head=self.pub_pose is None)
            return wait_until(lambda: self.peer.messages("/ego/clip_metadata"), 0.5, "", raise_on_timeout=False)
        self._warmups = 0
        wait_until(warmed_up, 60, "a warm-up frame to come out of the node", interval_s=0.0)
        # A warm-up message the node's reader dropped before it matched us is repaired later: wait until the node
        # has acknowledged everything, or a late warm-up stamp would look like a jump back in time.
        for pub in [self.pub_image, self.pub_info, self.pub_tf, self.pub_depth, self.pub_pose]:
            assert pub is None or pub.wait_for_all_acked(Duration(seconds=10)), f"{pub.topic_name} never acked"
        flushed = []

        def settled():
            p = self.progress()
            if p.frames_waiting or p.frames_received != self._warmups:
                return None
            if 0 < p.frames_queued < self.clip_frames and not flushed:
                # A partial clip (a warm-up frame lost before the node matched us) would wait for good, and nothing
                # else is on its way: end the stream, which generates it (padded to a whole clip).
                flushed.append(self.pub_flush.publish(Empty()))
            return p if p.frames_queued == 0 else None
        self.baseline = wait_until(settled, 30, raise_on_timeout=False)
        assert self.baseline, f"the {self._warmups} warm-up frames did not settle\n{self.state()}"
        self.peer.clear()

    def send_frame(self, ns, image=None, depth=True, head=True, exo_tf=True, info=True):
        if info:
            self.pub_info.publish(info_msg())
        if exo_tf:
            self.pub_tf.publish(tf_msg(ns, "world", "exo_optical"))
        if head:
            self.pub_tf.publish(tf_msg(ns, "world", "head"))
        if depth and self.pub_depth:
            depth = depth if isinstance(depth, Image) else depth_msg(ns)
            self.pub_depth.publish(compressed_depth(depth) if self.compressed else depth)
        image = image or image_msg(ns)
        self.pub_image.publish(compressed(image) if self.compressed and isinstance(image, Image) else image)

    def meta_for(self, ns, timeout_s=20.0) -> ClipMetadata:
        return wait_until(lambda: next((m for m in self.peer.messages("/ego/clip_metadata")
                                        if any(ns_of(s) == ns for s in m.source_stamps)), None),
                          timeout_s, f"clip metadata of the frame at {ns / SEC:.3f} s\n{self.state()}")

    def ok(self, ns) -> ClipMetadata:
        """The clip metadata of the frame at `ns`, which must say it was published."""
        meta = self.meta_for(ns)
        assert meta.status == ClipMetadata.STATUS_OK, f"{meta.reason}\n{self.state()}"
        return meta

    def state(self) -> str:
        """The node's newest progress and diagnostics and its log, for failure messages."""
        diagnostics = self.peer.messages("/diagnostics")
        values = {kv.key: kv.value for s in diagnostics[-1].status for kv in s.values} if diagnostics else {}
        return f"progress: {self.progress()}\ndiagnostics: {values}\nnode log:\n{self.node.log()[-2000:]}"

    def output(self, topic, ns):
        return wait_until(lambda: next((m for m in self.peer.messages(topic) if ns_of(m.header.stamp) == ns), None),
                          10, f"{topic} at {ns / SEC:.3f} s")

    def progress(self) -> NodeProgress:
        """The node's newest progress (the baseline until a new one arrives after the handshake)."""
        messages = self.peer.messages("/egox/progress")
        return messages[-1] if messages else self.baseline


def ego_rgb(msg: Image) -> np.ndarray:
    assert msg.encoding == "rgb8"
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


@pytest.fixture
def rig(peer, tmp_path, request):
    """A node with the test settings, plus any parameters a test passes with indirect parametrisation."""
    params = {**RIG_PARAMS, **getattr(request, "param", {})}
    node = NodeProcess(tmp_path, params=params)
    yield Rig(peer, node, compressed=params.get("inputs.exo_transport") == "compressed")
    node.stop()


def test_every_output_carries_the_source_stamp_and_ego_frame(rig):
    ns = T0
    rig.send_frame(ns)
    meta = rig.meta_for(ns)
    assert meta.status == ClipMetadata.STATUS_OK, meta.reason
    assert meta.generator == "prior" and meta.ego_frame_id == "ego_camera_optical"
    assert meta.exo_frame_id == "exo_optical" and [ns_of(s) for s in meta.source_stamps] == [ns]
    ego = rig.output("/ego/image_raw", ns)
    prior = rig.output("/ego/prior/image_raw", ns)
    mask = rig.output("/ego/prior/mask", ns)
    info = rig.output("/ego/camera_info", ns)
    prior_info = rig.output("/ego/prior/camera_info", ns)      # the sibling image_transport and RViz look for
    for msg in (ego, prior, mask, info, prior_info):
        assert msg.header.frame_id == "ego_camera_optical"
    assert (ego.width, ego.height, info.width, info.height) == (448, 448, 448, 448)
    assert list(prior_info.k) == list(info.k) and (prior_info.width, prior_info.height) == (448, 448)
    assert list(info.k) == [224.0, 0.0, 223.5, 0.0, 224.0, 223.5, 0.0, 0.0, 1.0]
    rgb = ego_rgb(ego)
    mask_px = np.frombuffer(bytes(mask.data), np.uint8).reshape(448, 448)
    # The plane fills the exo view (77 degrees) and so the middle of the 90-degree ego view, not its corners.
    assert tuple(rgb[224, 224]) == COLOR and mask_px[224, 224] == 255
    assert tuple(rgb[2, 2]) == (0, 0, 0) and mask_px[2, 2] == 0
    assert 0.3 < meta.prior_coverage[0] < 0.95
    ego_tf = wait_until(lambda: [t for m in rig.peer.messages("/tf") for t in m.transforms
                                 if t.child_frame_id == "ego_camera_optical"], 10, "the ego frame on /tf")
    assert ego_tf[0].header.frame_id == "world" and ns_of(ego_tf[0].header.stamp) == ns
    b = rig.baseline
    p = wait_until(lambda: rig.progress().frames_published == b.frames_published + 1 and rig.progress(), 10, "progress")
    assert (p.frames_received - b.frames_received, p.frames_dropped - b.frames_dropped,
            p.frames_waiting, p.frames_queued) == (1, 0, 0, 0)


# One frame per prior (the camera holds still: the static average of one frame): the fusion averages the colours
# of the window, and each frame here has its own encoding.
@pytest.mark.parametrize("rig", [{"fusion.window_frames": 1, "fusion.static_window_frames": 1}], indirect=True)
@pytest.mark.parametrize("depth_encoding", ["16UC1", "32FC1"])
def test_image_encodings_and_depth_units(rig, depth_encoding):
    for i, encoding in enumerate(["rgb8", "bgr8", "rgba8", "bgra8"]):
        ns = T0 + i * SEC // 10
        rig.send_frame(ns, image=image_msg(ns, encoding), depth=depth_msg(ns, 2.0, depth_encoding))
        rig.ok(ns)
        assert tuple(ego_rgb(rig.output("/ego/image_raw", ns))[224, 224]) == COLOR, encoding
    for i, encoding in enumerate(["mono8", "mono16"]):
        ns = T0 + (10 + i) * SEC // 10
        rig.send_frame(ns, image=image_msg(ns, encoding), depth=depth_msg(ns, 2.0, depth_encoding))
        rig.ok(ns)
        assert tuple(ego_rgb(rig.output("/ego/image_raw", ns))[224, 224]) == (COLOR[0],) * 3, encoding
    # A padded row step is honoured: 8 spare bytes per row.
    ns = T0 + 2 * SEC
    padded = image_msg(ns, step=W * 3 + 8, data=np.pad(np.broadcast_to(np.array(COLOR, np.uint8), (H, W, 3))
                                                       .reshape(H, W * 3), ((0, 0), (0, 8))).tobytes())
    rig.send_frame(ns, image=padded, depth=depth_msg(ns, 2.0, depth_encoding))
    assert tuple(ego_rgb(rig.output("/ego/image_raw", ns))[224, 224]) == COLOR


@pytest.mark.parametrize("rig", [{"inputs.exo_transport": "compressed", "inputs.depth_transport": "compressedDepth",
                                  "fusion.window_frames": 1, "fusion.static_window_frames": 1}], indirect=True)
@pytest.mark.parametrize("depth_encoding,container", [("16UC1", "png"), ("32FC1", "jpeg")])
def test_compressed_image_and_compressed_depth_inputs(rig, depth_encoding, container):
    # image_transport's compressed (JPEG / PNG) exo image and compressedDepth (PNG of mm, or of quantised inverse
    # depth for 32FC1) on their topics: the same prior as from raw images, within JPEG's colour error.
    ns = T0
    rig.send_frame(ns, image=compressed(image_msg(ns), container), depth=depth_msg(ns, 2.0, depth_encoding))
    meta = rig.ok(ns)
    assert 0.3 < meta.prior_coverage[0] < 0.95
    rgb = ego_rgb(rig.output("/ego/prior/image_raw", ns))
    assert np.abs(rgb[224, 224].astype(int) - COLOR).max() <= (0 if container == "png" else 8)
    # A payload that is not an image: one drop with the decoder's reason, and the node goes on.
    bad = compressed(image_msg(ns + SEC))
    bad.data = b"not a png"
    rig.send_frame(ns + SEC, image=bad)
    assert rig.meta_for(ns + SEC).reason.startswith("bad_image: compressed image")
    rig.send_frame(ns + 2 * SEC)
    rig.ok(ns + 2 * SEC)


def test_bad_input_is_dropped_with_a_reason_and_the_node_keeps_running(rig):
    t = iter(range(T0, T0 + 100 * SEC, SEC // 10))
    first = next(t)
    rig.send_frame(first)
    rig.ok(first)
    cases = {}
    ns = next(t); rig.send_frame(ns, image=image_msg(ns, "nv21")); cases[ns] = "bad_image"
    ns = next(t); rig.send_frame(ns, image=image_msg(ns, step=W * 3 - 1)); cases[ns] = "bad_image"
    ns = next(t); rig.send_frame(ns, image=image_msg(ns, data=b"\x00" * 10)); cases[ns] = "bad_image"
    ns = next(t); rig.send_frame(ns, image=image_msg(ns, width=80, height=60), depth=depth_msg(ns, width=80, height=60))
    cases[ns] = "camera_info_mismatch"
    ns = next(t); rig.send_frame(ns, depth=False); cases[ns] = "depth_missing"
    # 32FC1 bytes labelled 16UC1 (each float reads as two millimetre values): implausible, not a silent empty prior.
    ns = next(t); wrong = depth_msg(ns, 2.1234, "32FC1"); wrong.encoding = "16UC1"
    rig.send_frame(ns, depth=wrong); cases[ns] = "bad_depth"
    # Last: any later head TF would let this frame interpolate, as tf2 would.
    ns = next(t); rig.send_frame(ns, head=False); cases[ns] = "tf_unavailable"
    for ns, code in cases.items():
        meta = rig.meta_for(ns)
        assert meta.status == ClipMetadata.STATUS_DROPPED and meta.reason.startswith(code + ":"), (code, meta.reason)
        assert len(meta.reason) > len(code) + 10  # says why, not only what
    # A good frame, then one older than it (out of order), then one whose TF is older than the buffer's history.
    good = next(t)
    rig.send_frame(good)
    rig.ok(good)
    older = good - SEC // 20
    rig.pub_depth.publish(depth_msg(older))
    rig.pub_image.publish(image_msg(older))
    assert rig.meta_for(older).reason.startswith("out_of_order_stamp:")
    # NaN / zero depth: the frame adds no points, but is published with the prior of the earlier window frames,
    # and the diagnostics report it.
    ns = next(t)
    rig.send_frame(ns, depth=depth_msg(ns, 0.0))
    meta = rig.meta_for(ns)
    assert meta.status == ClipMetadata.STATUS_OK and meta.prior_coverage[0] > 0.3
    ns = next(t)
    rig.send_frame(ns, depth=depth_msg(ns, float("nan"), "32FC1"))
    rig.ok(ns)
    # Still alive and right after all of that.
    ns = next(t)
    rig.send_frame(ns)
    rig.ok(ns)
    assert tuple(ego_rgb(rig.output("/ego/image_raw", ns))[224, 224]) == COLOR
    b = rig.baseline
    # Every frame accounted for once nothing waits and nothing is queued (the last frame may still be counted in
    # the generator queue by a progress message sent before its output).
    p = wait_until(lambda: (q := rig.progress()).frames_received == b.frames_received + 13 and q.frames_waiting == 0
                   and q.frames_queued == 0 and q, 10, "progress to count 13 more frames")
    assert p.frames_published + p.frames_dropped == p.frames_received and p.frames_lost == 0
    assert p.frames_dropped - b.frames_dropped == 8

    def diag():
        for array in reversed(rig.peer.messages("/diagnostics")):
            values = {kv.key: kv.value for s in array.status for kv in s.values}
            if values.get("frames_received") == str(p.frames_received):
                return values
    values = wait_until(diag, 10, "diagnostics counting 11 frames")
    assert values["dropped.bad_image"] == "3" and values["dropped.out_of_order_stamp"] == "1"
    assert values["dropped.tf_unavailable"] == "1" and values["dropped.depth_missing"] == "1"
    assert values["dropped.bad_depth"] == "1" and values["input_problems.bad_depth"] == "1"
    assert int(values["input_problems.depth_without_valid_pixels"]) == 2
    assert "input_rate_hz" in values and "window_frames" in values
    assert values["fusion.in_use"] == "static" and values["fusion.camera_moves"] == "0"   # 'auto', a still camera
    transport_ms, callback_ms = (float(x) for x in values["input_delay_max_ms.image"].split(" / "))
    assert 0.0 <= transport_ms <= callback_ms  # a message reaches the queue before its callback runs
    assert rig.node.proc.poll() is None


def test_images_lost_in_an_overflowing_input_queue_are_counted(peer, tmp_path):
    # A one-message input queue and a node that cannot take messages (stopped) while ten images arrive: the
    # subscription keeps only the newest, and the node learns of the others from the publisher's sequence numbers.
    node = NodeProcess(tmp_path, params={**SCENE, "sync.timeout_s": 1.0, "qos.input_reliability": "reliable",
                                         "qos.input_depth": 1, "diagnostics.period_s": 0.2})
    try:
        rig = Rig(peer, node)
        b = rig.baseline
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            stamps = [T0 + i * SEC // 10 for i in range(10)]
            for ns in stamps:
                rig.pub_image.publish(image_msg(ns))
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        p = wait_until(lambda: (q := rig.progress()).frames_received + q.frames_lost
                       == b.frames_received + b.frames_lost + 10 and q.frames_waiting == 0 and q, 20,
                       f"the node to account for 10 images\n{node.log()[-2000:]}")
        lost = p.frames_lost - b.frames_lost
        assert lost >= 1, "ten images into a one-message queue of a stopped node: some must be lost"
        def accounted():
            seen = {ns_of(t) for m in rig.peer.messages("/ego/clip_metadata") for t in m.source_stamps}
            return [ns for ns in stamps if ns in seen]
        received = wait_until(lambda: len(a := accounted()) == 10 - lost and a, 10,
                              f"metadata for the {10 - lost} images the node took")
        assert received[-1] == stamps[-1]  # a full queue keeps the newest image
        values = wait_until(lambda: next((v for a in reversed(rig.peer.messages("/diagnostics"))
                                          if (v := {kv.key: kv.value for s in a.status for kv in s.values})
                                          .get("frames_lost") == str(p.frames_lost)), None), 10,
                            "diagnostics counting the lost images")
        assert values["frames_lost"] == str(p.frames_lost)
        assert "lost before the node took them" in wait_until(lambda: "lost before" in node.log() and node.log(),
                                                              10, "the loss warning in the log")
    finally:
        node.stop()


def test_a_clip_longer_than_the_output_history_reaches_a_subscriber_whole(peer, tmp_path):
    """generator.prior_clip_frames 13 (egox replay / process set 49): a clip's 13 frames are published at once, so
    the output history (qos.output_depth 10) holds a whole clip: with 10, a recorder that took a 49-frame clip a
    little late lost the oldest frames of it (46 of 49)."""
    node = NodeProcess(tmp_path, params={**RIG_PARAMS, "generator.prior_clip_frames": 13})
    try:
        rig = Rig(peer, node, clip_frames=13)
        stamps = [T0 + k * SEC // 30 for k in range(13)]
        for ns in stamps:
            rig.send_frame(ns)
        meta = rig.ok(stamps[0])
        assert [ns_of(s) for s in meta.source_stamps] == stamps
        for topic in ("/ego/image_raw", "/ego/prior/image_raw", "/ego/prior/mask"):
            def got(topic=topic):      # (a warm-up frame's output may still come in late)
                return [ns for ns in (ns_of(m.header.stamp) for m in rig.peer.messages(topic)) if ns >= T0]
            wait_until(lambda: len(got()) >= len(stamps), 10, f"the clip's 13 frames on {topic}",
                       raise_on_timeout=False)
            assert got() == stamps, topic
    finally:
        node.stop()


@pytest.mark.parametrize("rig", [{"outputs.publish_cloud": True}], indirect=True)
def test_fused_cloud_is_published_for_rviz(rig):
    from sensor_msgs.msg import PointCloud2
    from egox_ros.ros.pointcloud2 import pointcloud2_to_cloud
    sub = rig.peer.collect(PointCloud2, "/ego/prior/cloud")
    wait_until(lambda: sub.get_publisher_count() > 0, 10, "the cloud publisher")
    # Matching is only visible from our side: send frames until a cloud comes out (normally the first).
    for n in range(10):
        ns = T0 + n * SEC
        rig.send_frame(ns)
        rig.ok(ns)
        msg = wait_until(lambda: next((m for m in rig.peer.messages("/ego/prior/cloud")
                                       if ns_of(m.header.stamp) == ns), None), 2, "", raise_on_timeout=False)
        if msg:
            break
    assert msg, "no fused cloud on /ego/prior/cloud"
    assert msg.header.frame_id == "world"
    cloud = pointcloud2_to_cloud(msg)
    points, colors = cloud.points_world.numpy(), cloud.colors.numpy()
    # The plane 2 m in front of the exo camera (at the world origin), in its colour, at voxel resolution.
    assert len(cloud) > 1000
    assert np.allclose(points[:, 2], 2.0, atol=0.01)
    assert (colors == COLOR).all()


def test_tf_interpolation_between_samples_and_a_time_jump_back(rig):
    ns = T0 + 50 * SEC
    rig.send_frame(ns)
    rig.ok(ns)
    # The next TF samples come 1.5 s later; an image in between is interpolated, as tf2 does.
    past = ns + SEC // 2
    rig.pub_tf.publish(tf_msg(past + SEC, "world", "head"))
    rig.pub_tf.publish(tf_msg(past + SEC, "world", "exo_optical"))
    rig.pub_depth.publish(depth_msg(past))
    rig.pub_image.publish(image_msg(past))
    ok = rig.meta_for(past)  # interpolated between T0+50 and T0+51.5: fine
    assert ok.status == ClipMetadata.STATUS_OK
    # A bag that loops: stamps jump back by far more than sync.time_jump_back_s. One image stamped 0 is a stray
    # (dropped, nothing reset); three images in a row on the new timeline confirm the jump: TF and the window reset.
    rig.send_frame(0)
    after = past + SEC // 30
    rig.send_frame(after)
    assert rig.meta_for(0).reason.startswith("out_of_order_stamp:") and rig.ok(after)
    looped = [T0 + i * SEC // 30 for i in range(3)]
    for ns in looped:
        rig.send_frame(ns)
    for ns in looped:
        rig.ok(ns)
    assert "time jumped back" in wait_until(lambda: "time jumped back" in rig.node.log() and rig.node.log(), 10,
                                            "the time-jump warning in the log")


def test_flush_drops_frames_that_still_wait(rig):
    ns = T0
    rig.send_frame(ns, head=False)
    rig.pub_flush.publish(Empty())
    meta = rig.meta_for(ns)
    assert meta.status == ClipMetadata.STATUS_DROPPED and meta.reason.startswith("end_of_stream:")
    assert "TF" in meta.reason


def test_head_pose_from_a_pose_topic_with_offset(peer, tmp_path):
    # The head pose comes from PoseStamped; the ego optical frame is 1 m behind the head along z (the plane moves to
    # 3 m, so the prior covers less of the ego view than with the head at the camera).
    node = NodeProcess(tmp_path, params={**SCENE, "inputs.head_source": "pose_topic", "outputs.head_to_ego_xyz_m": [0.0, 0.0, -1.0],
                                         "qos.input_reliability": "reliable"})
    try:
        rig = Rig(peer, node, pose_topic=True)
        ns = T0
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp(ns), "world"
        pose.pose.orientation.w = 1.0
        rig.pub_pose.publish(pose)
        rig.send_frame(ns, head=False)
        meta = rig.meta_for(ns)
        assert meta.status == ClipMetadata.STATUS_OK, meta.reason
        assert 0.1 < meta.prior_coverage[0] < 0.3
        ego_tf = wait_until(lambda: [t for m in peer.messages("/tf") for t in m.transforms
                                     if t.child_frame_id == "ego_camera_optical"], 10, "ego frame on /tf")
        assert ego_tf[0].transform.translation.z == pytest.approx(-1.0)
    finally:
        node.stop()


def test_parameters_from_yaml_with_command_line_override(peer, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    ego_camera:\n      width: 96\n      height: 64\n      fx: 50\n"
                      "    outputs:\n      ego_frame: my_ego\n")
    node = NodeProcess(tmp_path, params_file=params, params={"ego_camera.height": 80,
                                                             "qos.input_reliability": "reliable"})
    try:
        rig = Rig(peer, node)
        rig.send_frame(T0)
        info = rig.output("/ego/camera_info", T0)
        assert (info.width, info.height, info.k[0], info.header.frame_id) == (96, 80, 50.0, "my_ego")
    finally:
        node.stop()


@pytest.mark.parametrize("name,value", [("prior.point_radius_px", "99"),      # out of range
                                        ("sync.timeout_s", "-1.0"),           # out of range
                                        ("qos.input_depth", "5.0"),           # wrong type
                                        ("inputs.head_source", "nose")])      # not a choice
def test_invalid_parameter_stops_the_node_with_one_clear_line(tmp_path, name, value):
    # `egox node` takes --ros-args directly (no `--` needed).
    result = subprocess.run([sys.executable, "-m", "egox_ros.cli", "node", "--ros-args", "-p", f"{name}:={value}"],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and name.split(".")[1] in output, output
    assert len([line for line in output.splitlines() if "cannot start" in line]) == 1, output


def test_a_misspelt_parameter_gets_a_warning_with_the_closest_name(tmp_path):
    node = NodeProcess(tmp_path, params={"sync.timout_s": 5.0})
    try:
        wait_until(lambda: "egox ready" in node.log() or node.proc.poll() is not None, 60, "the node to start")
        assert node.proc.poll() is None, node.log()
        assert "unknown parameter 'sync.timout_s' is ignored; did you mean 'sync.timeout_s'?" in node.log()
        assert "use_sim_time" not in node.log()
    finally:
        node.stop()
