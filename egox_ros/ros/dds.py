"""Environment that keeps DDS traffic on this machine: shared memory only, localhost discovery, own domain id."""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path

SHM_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm_only.xml"


def isolated_env(domain_id: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) with a private ROS_DOMAIN_ID (random in 1..100 unless given),
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, Fast DDS on shared memory only, and rmw_fastrtps_cpp."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.randint(1, 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


DDS_ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")


def apply_isolated_env(domain_id: int | None = None) -> dict[str, str]:
    """Set the isolated environment in this process (before rclpy.init) and return it."""
    env = isolated_env(domain_id)
    for key in DDS_ENV_KEYS:
        os.environ[key] = env[key]
    return env


class BackgroundSpin:
    """``executor.spin()`` on a daemon thread. ``stop()`` shuts the executor down and waits until the thread has
    left spin(), before the caller destroys its nodes or context: rclpy's Executor.shutdown() does not wait for a
    spin in progress, and destroying a node under it once left a replay hung for good."""

    def __init__(self, executor, name: str = "egox-spin"):
        self.executor = executor
        self.thread = threading.Thread(target=executor.spin, name=name, daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """True once the spin thread has ended (False: still running after timeout_s)."""
        self.executor.shutdown()
        self.thread.join(timeout_s)
        return not self.thread.is_alive()
