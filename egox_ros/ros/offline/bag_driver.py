"""The core engine driven from a bag (for `egox process`): bag messages decoded as the node decodes them, engine
events written into an output bag as the node's messages. Imports torch; egox_ros/ros/offline/process.py loads it only
when a run starts, so `egox --help` and argument errors stay fast."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from rclpy.serialization import serialize_message

from egox_ros.core.runtime.engine import EgoEngine, EngineEvents
from egox_ros.ros import conversions as conv
from egox_ros.ros.inputs import EngineInputs
from egox_ros.ros.mcap_bag import McapBag
from egox_ros.ros.offline.plan import NODE_NAME, OUTPUT_TOPICS, ReplayError
from egox_ros.ros.outputs import OutputMessages


class BagWriter(EngineEvents):
    """Engine events -> the node's output messages -> OUT/bag (raw CDR, log time = header stamp, as the replay's
    recorder writes them). Also counts what it wrote and remembers warnings for the log.

    Thread-safe: the engine reports from its worker threads too (person masks, head estimates and drops from the
    person detector's thread, clips from the caller's); McapBag serialises the writes, a lock the log lines."""

    def __init__(self, out_bag: Path, typestore, ego_frame: str):
        self.bag = McapBag(out_bag, typestore)
        for topic, type_name in OUTPUT_TOPICS.items():
            self.bag.add_topic(topic, type_name)
        self.ego_frame = ego_frame
        self.messages: OutputMessages | None = None     # set once the engine exists
        self.log_lines: list[str] = []
        self.lock = threading.Lock()                    # guards log_lines

    @property
    def counts(self) -> dict[str, int]:
        """Messages written per output topic."""
        return self.bag.counts

    def write(self, messages: list[tuple[str, object]]) -> None:
        """The node's output messages ((topic as the node names it, message)) into the bag; raises RuntimeError once
        it is closed."""
        for topic, msg in messages:
            name = f"/{NODE_NAME}/{topic[2:]}" if topic.startswith("~/") else "/" + topic.lstrip("/")
            if name not in OUTPUT_TOPICS:
                continue
            if name == "/tf":
                if not any(t.child_frame_id == self.ego_frame for t in msg.transforms):
                    continue            # as recorded by the replay: only the node's ego frame
                stamp = msg.transforms[0].header.stamp
            else:
                stamp = msg.header.stamp
            if not self.bag.write(name, conv.stamp_to_ns(stamp), serialize_message(msg)):
                raise RuntimeError("the output bag is closed")

    def dropped(self, drop) -> None:
        self.write(self.messages.drop(drop))

    def clip(self, output, latency_s: float) -> None:
        self.write(self.messages.clip(output, latency_s))

    def person_mask(self, stamp_ns, mask, frame_id) -> None:
        self.write(self.messages.person_mask(stamp_ns, mask, frame_id))

    def head(self, stamp_ns, estimate) -> None:
        self.write(self.messages.head(stamp_ns, estimate))

    def note(self, code: str, detail: str, count: int = 1) -> None:
        with self.lock:
            self.log_lines.append(f"[{code}] {detail}")

    def log(self, level: str, text: str) -> None:
        with self.lock:
            self.log_lines.append(f"[{level}] {text}")

    def close(self) -> None:
        """Close the bag (idempotent); a write after this raises."""
        self.bag.close()


class BagInputs(EngineInputs):
    """Bag topic -> handler: the node's inputs (EngineInputs.topics) under the bag's names, plus TF."""

    def __init__(self, engine: EgoEngine, inputs, remaps: dict[str, str]):
        """remaps: node input (e.g. 'exo/image_raw') -> bag topic, as `egox replay`'s plan decides them."""
        super().__init__(engine, inputs)
        self.handlers = {remaps.get(name, "/" + name): handler for name, (_, handler) in self.topics().items()}
        self.handlers.update({"/tf": lambda m: self.tf(m, False), "/tf_static": lambda m: self.tf(m, True)})
        self.image_topic = next(topic for topic, handler in self.handlers.items() if handler == self.image)


def wait_for_workers(engine: EgoEngine, timeout_s: float = 600.0) -> None:
    """Block until the person detector and the depth models have no image left (lockstep, so runs repeat)."""
    deadline = time.monotonic() + timeout_s
    while engine.workers_busy():
        if time.monotonic() > deadline:
            raise ReplayError(f"the depth / person models did not finish an image within {timeout_s:.0f} s")
        time.sleep(0.001)
