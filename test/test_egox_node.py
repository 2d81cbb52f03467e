"""The node with the `egox` generator on a tiny random checkpoint (no download), end to end over real DDS; and the
node without weights, which says so and publishes priors."""
from __future__ import annotations

import numpy as np
import pytest
from egox_msgs.msg import ClipMetadata
from std_msgs.msg import Empty

from conftest import NodeProcess, wait_until
from egox_ros.core.egox.tiny import save_tiny_lora, save_tiny_model
from test_node import RIG_PARAMS, SEC, T0, Rig, ego_rgb, ns_of

CLIP = 5
# A 2:1 canvas half for the 160x120 exo images (resized to 64x32 without cropping, as released), a 32x32 ego view.
TINY = {"generator.name": "egox", "egox.clip_frames": CLIP, "egox.exo_width": 64, "egox.exo_height": 32,
        "egox.steps": 2, "ego_camera.width": 32, "ego_camera.height": 32, "ego_camera.fx": 16.0,
        "ego_camera.fy": 16.0, "ego_camera.cx": 15.5, "ego_camera.cy": 15.5}
RIG = {**RIG_PARAMS, "sync.queue_capacity": 100}   # whole clips queue up while the first one is generated


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_egox")
    return save_tiny_model(root / "model"), save_tiny_lora(root / "lora")


def diagnostics(rig) -> dict:
    arrays = rig.peer.messages("/diagnostics")
    return {kv.key: kv.value for s in arrays[-1].status for kv in s.values} if arrays else {}


def test_the_egox_generator_publishes_clips_with_their_source_stamps(peer, tmp_path, tiny_weights):
    model, lora = tiny_weights
    node = NodeProcess(tmp_path, params={**RIG, **TINY, "egox.model_path": str(model), "egox.lora_path": str(lora)})
    try:
        rig = Rig(peer, node, clip_frames=CLIP)
        stamps = [T0 + i * SEC // 30 for i in range(2 * CLIP + 2)]
        for ns in stamps:
            rig.send_frame(ns)
        # The stream ends two frames into a third clip: once they are queued, end it; the last clip is padded with
        # its last frame, and only its two real frames come out.
        b = rig.baseline
        wait_until(lambda: (p := rig.progress()).frames_received - b.frames_received == len(stamps)
                   and p.frames_waiting == 0, 60, f"the node to queue every frame\n{rig.state()}")
        rig.pub_flush.publish(Empty())
        metas = [rig.ok(ns) for ns in stamps]
        for clip in (stamps[:CLIP], stamps[CLIP:2 * CLIP], stamps[2 * CLIP:]):   # clips of 5, 5 and 2 frames
            meta = rig.meta_for(clip[0])
            assert [ns_of(s) for s in meta.source_stamps] == clip and ns_of(meta.header.stamp) == clip[0]
            assert len(meta.prior_coverage) == len(clip)
        meta = metas[0]
        assert meta.generator == "egox" and meta.generation_time_s > 0 and len(meta.prior_coverage) == CLIP
        settings = {kv.key: kv.value for kv in meta.generator_settings}
        assert "rank 256" in settings["lora"] and settings["gga"].startswith("released, strength 3.0")
        assert settings["steps"] == "2" and settings["canvas"] == "64+32x32"
        # The released inference's sampler by default (docs/egox-fidelity.md).
        assert (settings["clip_image"], settings["exo_latent"], settings["prior_latent"], settings["exo_fit"],
                settings["negative_prompt"]) == ("released", "sample", "sample", "released", "")
        for ns in stamps:                                    # every frame out, stamped with its source stamp
            ego = rig.output("/ego/image_raw", ns)
            assert (ego.width, ego.height, ego.header.frame_id) == (32, 32, "ego_camera_optical")
            assert ego_rgb(ego).std() > 0                   # a generated image, not a blank
            prior = rig.output("/ego/prior/image_raw", ns)
            assert ego_rgb(prior).tobytes() != ego_rgb(ego).tobytes()
        values = wait_until(lambda: (d := diagnostics(rig)).get("generator_state") == "ready" and d, 10,
                            "diagnostics saying the generator is ready")
        assert values["generator"] == "egox" and "generator_problem" not in values
        p = rig.progress()
        assert p.frames_published - rig.baseline.frames_published == len(stamps)
        assert p.frames_dropped == rig.baseline.frames_dropped
    finally:
        node.stop()


def test_without_weights_the_node_says_so_and_publishes_priors(peer, tmp_path):
    node = NodeProcess(tmp_path, params={**RIG, "generator.name": "egox",
                                         "egox.model_path": str(tmp_path / "no_such_model")})
    try:
        rig = Rig(peer, node)                                # starts, and frames come out (priors, one by one)
        rig.send_frame(T0)
        meta = rig.ok(T0)
        assert meta.generator == "prior"
        prior = ego_rgb(rig.output("/ego/prior/image_raw", T0))
        assert np.array_equal(ego_rgb(rig.output("/ego/image_raw", T0)), prior)
        values = wait_until(lambda: (d := diagnostics(rig)).get("generator_problem") and d, 10,
                            "diagnostics naming the generator problem")
        assert "model_index.json is missing" in values["generator_problem"]
        assert "hf download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers" in values["generator_problem"]
        assert values["generator_state"] == "fallback"
        array = rig.peer.messages("/diagnostics")[-1]
        assert array.status[0].level == array.status[0].WARN
        assert "publishing priors" in node.log()
    finally:
        node.stop()


def test_a_generator_that_fails_to_load_falls_back_without_losing_frames(peer, tmp_path, tiny_weights):
    # The files are there (so the node starts as egox) but the LoRA does not fit the model: loading fails on the
    # worker, the node falls back to priors and still accounts for every frame.
    model, _ = tiny_weights
    bad = save_tiny_lora(tmp_path / "bad_lora", rank=8, num_layers=3)
    node = NodeProcess(tmp_path, params={**RIG, **TINY, "egox.model_path": str(model), "egox.lora_path": str(bad)})
    try:
        rig = Rig(peer, node, clip_frames=CLIP)
        values = wait_until(lambda: (d := diagnostics(rig)).get("generator_problem") and d, 20,
                            "diagnostics naming the generator problem")
        assert "the model has 2 blocks" in values["generator_problem"]
        stamps = [T0 + i * SEC // 30 for i in range(3)]
        for ns in stamps:
            rig.send_frame(ns)
        assert all(rig.meta_for(ns).status == ClipMetadata.STATUS_OK for ns in stamps)
    finally:
        node.stop()
