"""The node with depth from models (tiny random checkpoints built from configs, loaded like real ones), over real
DDS: depth from the image alone, a depth topic that stops (fallback to the model), and a missing model folder."""
from __future__ import annotations

import pytest
from egox_msgs.msg import ClipMetadata

from conftest import NodeProcess, wait_until
from egox_ros.core.depth.tiny import save_tiny_depth_model
from test_node import RIG_PARAMS, SEC, T0, Rig

RIG = {**RIG_PARAMS, "sync.queue_capacity": 100}   # frames complete in bursts when an estimate arrives


@pytest.fixture(scope="module")
def metric_model(tmp_path_factory):
    return save_tiny_depth_model(tmp_path_factory.mktemp("depth") / "metric", "depth_anything_metric")


def diagnostics(rig, **expect) -> dict:
    """The newest diagnostics values whose keys include `expect`'s (with those values)."""
    def match():
        for array in reversed(rig.peer.messages("/diagnostics")):
            values = {kv.key: kv.value for s in array.status for kv in s.values}
            if all(values.get(k) == v for k, v in expect.items()):
                return values
    return wait_until(match, 10, f"diagnostics with {expect}")


def test_depth_from_the_image_alone(peer, tmp_path, metric_model):
    node = NodeProcess(tmp_path, params={**RIG, "depth.source": "model", "depth.model_path": str(metric_model)})
    try:
        rig = Rig(peer, node, depth=False)                       # no depth topic at all
        stamps = [T0 + i * SEC // 30 for i in range(6)]
        for ns in stamps:
            rig.send_frame(ns)
        metas = [rig.ok(ns) for ns in stamps]
        assert all(m.prior_coverage[0] > 0.05 for m in metas), [m.prior_coverage[0] for m in metas]
        values = diagnostics(rig, **{"depth.active": "model"})
        assert values["depth.source"].startswith("model (") and int(values["depth.estimated"]) >= 1
        assert "depth.compute_ms" in values
        assert peer.node.count_subscribers("/exo/image_raw") == 1        # the node's, matched by the rig
        assert peer.node.count_subscribers("/exo/depth/image_raw") == 0  # the model source does not listen
    finally:
        node.stop()


def test_a_depth_topic_that_stops_falls_back_to_the_model(peer, tmp_path, metric_model):
    node = NodeProcess(tmp_path, params={**RIG, "depth.source": "topic", "depth.model_path": str(metric_model),
                                         "depth.topic_timeout_s": 0.5})
    try:
        rig = Rig(peer, node)
        rig.send_frame(T0)
        assert rig.ok(T0).prior_coverage[0] > 0.05
        diagnostics(rig, **{"depth.active": "topic"})
        # The depth topic goes quiet; images keep coming. Frames of the first 0.5 s may wait for depth images that
        # never come (dropped as depth_missing, with the reason); after that the model gives them depth.
        stamps = [T0 + i * SEC // 10 for i in range(1, 40)]
        for ns in stamps:
            rig.send_frame(ns, depth=False)
            wait_until(lambda: rig.meta_for(ns), 10, "the frame's outcome")
        outcomes = [rig.meta_for(ns) for ns in stamps]
        assert all(m.status == ClipMetadata.STATUS_OK or "depth_missing" in m.reason for m in outcomes)
        assert all(m.status == ClipMetadata.STATUS_OK for m in outcomes[-10:])
        values = diagnostics(rig, **{"depth.active": "model"})
        assert int(values["depth.estimated"]) >= 10
        array = rig.peer.messages("/diagnostics")[-1]
        assert "depth from the model" in array.status[0].message
        # Depth images come back: frames take them again.
        back = T0 + 50 * SEC // 10
        rig.send_frame(back)
        assert rig.ok(back).status == ClipMetadata.STATUS_OK
        diagnostics(rig, **{"depth.active": "topic"})
    finally:
        node.stop()


def test_a_missing_depth_model_stops_the_node_saying_what_was_expected(tmp_path):
    node = NodeProcess(tmp_path, params={"depth.source": "model", "depth.model_path": str(tmp_path / "nowhere")})
    try:
        node.proc.wait(timeout=60)
    finally:
        node.stop()
    assert node.proc.returncode != 0
    log = node.log()
    assert "cannot start: DepthModelError" in log and "nowhere" in log and "hf download" in log


def test_video_depth_aligned_to_the_metric_model(peer, tmp_path, metric_model):
    from egox_ros.core.depth.tiny import save_tiny_depth_model
    relative = save_tiny_depth_model(tmp_path / "relative", "depth_anything_relative")
    node = NodeProcess(tmp_path, params={**RIG, "depth.source": "video", "depth.model_path": str(metric_model),
                                         "depth.video_model_path": str(relative),
                                         "depth_alignment.min_pixels": 50})
    try:
        rig = Rig(peer, node, depth=False)
        stamps = [T0 + i * SEC // 30 for i in range(4)]
        for ns in stamps:
            rig.send_frame(ns)
        assert all(rig.ok(ns).prior_coverage[0] > 0.05 for ns in stamps)
        values = diagnostics(rig, **{"depth.active": "model"})
        assert values["depth.source"].startswith("video (") and values["depth.alignment"].startswith("alpha ")
    finally:
        node.stop()
