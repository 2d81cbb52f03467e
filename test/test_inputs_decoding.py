"""The node's input decoding (ros/inputs.py) on real sensor_msgs messages into a real engine: what reaches the
engine as a frame and what is refused with a reason."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.runtime.engine import EgoEngine, EngineEvents
from egox_ros.ros.config import parameter_sections
from egox_ros.ros.inputs import EngineInputs
from egox_ros.ros.params import configs_from_parameters

SEC = 1_000_000_000
T0 = 100 * SEC
W, H = 160, 120


class Events(EngineEvents):
    def __init__(self):
        self.notes, self.drops = [], []

    def note(self, code: str, detail: str, count: int = 1) -> None:
        self.notes.append((code, detail))

    def dropped(self, drop) -> None:
        self.drops.append(drop)


def _image(ns: int, encoding: str, data: bytes, step: int) -> Image:
    msg = Image(height=H, width=W, encoding=encoding, is_bigendian=0, step=step)
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns // SEC, ns % SEC
    msg.header.frame_id = "exo_optical"
    msg.data = data
    return msg


def test_uniform_32fc1_depth_labelled_16uc1_drops_its_frame_as_bad_depth():
    """A depth camera's 32FC1 image of a wall 2 m away, labelled 16UC1: refused with a reason (bad_depth), its frame
    dropped as bad_depth, not published with an empty prior (coverage 0); the same image labelled 32FC1 is used."""
    configs, warnings = configs_from_parameters({"person.source": "none", "prior.splat": "hard"},
                                                parameter_sections())
    assert warnings == []
    events = Events()
    engine = EgoEngine({k: configs[k] for k in configs if k not in ("qos", "diagnostics")}, events)
    try:
        inputs = EngineInputs(engine, configs["inputs"])
        engine.set_camera_info(PinholeCamera(W, H, 100.0, 100.0, 79.5, 59.5), H, W)
        floats = np.full((H, W), 2.0, np.float32).tobytes()
        rgb = np.full((H, W, 3), 120, np.uint8).tobytes()
        identity = RigidTransform(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
        for ns, encoding in ((T0, "16UC1"), (T0 + SEC // 30, "32FC1")):
            engine.add_transforms([("world", "exo_optical", ns, identity, None), ("world", "head", ns, identity, None)])
            inputs.depth(_image(ns, encoding, floats, W * 4))
            inputs.image(_image(ns, "rgb8", rgb, W * 3))
        assert [code for code, _ in events.notes] == ["bad_depth"]
        assert "every other pixel" in events.notes[0][1]
        assert [(d.stamps_ns, d.code) for d in events.drops] == [([T0], "bad_depth")]
        assert engine.stats.received == 2 and engine.queued() + engine.stats.published == 1
    finally:
        engine.close()
