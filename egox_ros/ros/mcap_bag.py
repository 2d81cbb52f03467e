"""The one writer of new MCAP bags (rosbags) that `egox record`, the replay's recorder and `egox process` share."""
from __future__ import annotations

import threading
from pathlib import Path


class McapBag:
    """A new rosbag2 bag (version 8, MCAP storage) at `path`, written with rosbags; every message counted per topic.

    Thread-safe: DDS callbacks and the engine's worker threads write at the same time, and rosbags' writer is not
    (concurrent writes interleaved inside a chunk and left the bag unreadable). After close() nothing is written:
    write() returns False, so a message arriving late is refused, never half-written."""

    def __init__(self, path: Path, typestore):
        from rosbags.rosbag2 import StoragePlugin, Writer
        self._typestore = typestore
        self._writer = Writer(Path(path), version=8, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._lock = threading.Lock()
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}       # topic -> messages written (read a consistent copy with counts_now)

    def add_topic(self, topic: str, type_name: str) -> None:
        """A connection for `topic` (e.g. 'sensor_msgs/msg/Image'); raises as rosbags does for a type it cannot
        describe."""
        with self._lock:
            self._connections[topic] = self._writer.add_connection(topic, type_name, typestore=self._typestore)
            self.counts[topic] = 0

    def write(self, topic: str, log_ns: int, raw: bytes) -> bool:
        """One CDR-serialised message on an added topic at log time `log_ns` [ns]; False once the bag is closed."""
        with self._lock:
            if self._writer is None:
                return False
            self._writer.write(self._connections[topic], log_ns, bytes(raw))
            self.counts[topic] += 1
            return True

    def counts_now(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def close(self) -> dict[str, int]:
        """Close the bag (idempotent); the messages written per topic."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            return dict(self.counts)
