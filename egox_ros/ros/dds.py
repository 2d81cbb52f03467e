"""Environment that keeps DDS traffic on this machine: shared memory only (discovery too, no socket), own domain id."""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path

SHM_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm_only.xml"

# Why not ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: rmw_fastrtps (participant.cpp, create_participant) answers it by
# adding a default UDPv4 metatraffic unicast locator and a UDPv4 initial peer 127.0.0.1 on top of the XML profile, so
# every participant opened UDP sockets on 0.0.0.0 (ports 7400 + 250 * domain + ..., ephemeral ones) and one on the
# outward address, next to its shared memory. SYSTEM_DEFAULT leaves the profile's participant QoS as it is: shared
# memory only, discovery included, no socket at all. FASTDDS_BUILTIN_TRANSPORTS=SHM keeps it so if the profile were
# ever not loaded (Fast DDS then falls back to its builtin transports, which would otherwise be UDP on every
# interface). The variables below would add UDP peers or servers to every participant: they are removed.
DISCOVERY_RANGE = "SYSTEM_DEFAULT"
_REMOVED_KEYS = ("ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "ROS_LOCALHOST_ONLY", "FASTDDS_ENVIRONMENT_FILE")


def isolated_env(domain_id: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) with a private ROS_DOMAIN_ID (random in 1..100 unless given), Fast DDS
    on shared memory only (config/fastdds_shm_only.xml, discovery too: no UDP or TCP socket is opened) with
    ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT so that rmw_fastrtps adds no UDP locator to it, shared memory as
    the builtin transport should the profile not load, rmw_fastrtps_cpp, and no static peers or discovery server."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.randint(1, 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = DISCOVERY_RANGE
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    env["FASTDDS_BUILTIN_TRANSPORTS"] = "SHM"
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    for key in _REMOVED_KEYS:
        env.pop(key, None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


DDS_ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE",
                "FASTDDS_BUILTIN_TRANSPORTS", "RMW_IMPLEMENTATION", *_REMOVED_KEYS)


def apply_isolated_env(domain_id: int | None = None) -> dict[str, str]:
    """Set the isolated environment in this process (before rclpy.init) and return it."""
    env = isolated_env(domain_id)
    for key in DDS_ENV_KEYS:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
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
