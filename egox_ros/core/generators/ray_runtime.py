"""Starting or joining Ray (optional dependency) the same way everywhere: a local instance on loopback only, no
dashboard, no usage statistics; or a cluster at an address."""
from __future__ import annotations

import logging
import os


def init_ray(address: str = "", num_cpus: int | None = None):
    """Start a local Ray instance (address '') or connect to `address` ('auto', 'ray://host:10001'); returns the
    ray module. Raises ImportError without Ray, and Ray's own errors when it cannot start or connect.

    Loopback only: Ray resolves a node address of 127.0.0.1 to the machine's outward address, and its gRPC servers
    listen on the node address; with clusters off (Ray's single-machine mode) it keeps 127.0.0.1, so every server of
    the local instance listens on loopback. The switch is read when ray is imported, and set again in case it was
    imported already."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    if not address:
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.ERROR)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    return ray
