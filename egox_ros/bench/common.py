"""What every benchmark records: when, on which machine, with which versions; and a median timer."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable


def machine_info() -> dict:
    """Date, CPU, core count, memory and library versions of this run."""
    import numpy
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gb = None
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        from egox_ros.core.io.open3d_import import import_open3d
        versions["open3d"] = import_open3d().__version__
    except ImportError:
        versions["open3d"] = None
    for name in ("diffusers", "transformers", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gb": mem_gb,
            "gpu": gpu, "platform": platform.platform(), "versions": versions}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of fn() in milliseconds over `repeats` runs after `warmup` runs (sync: e.g. cuda sync)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def fixed_or_dash(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals, '-' for None (the benchmark tables' empty cell)."""
    return "-" if value is None else f"{value:.{digits}f}"


def missed_targets(name: str, checks) -> list[str]:
    """Of ``checks`` (what, value, relation '>=' or '<=', target, digits), the ones ``value`` misses (None misses;
    a None target is no target), each as '<name> <what> <value>, target <relation> <target>'."""
    missed = []
    for what, value, relation, target, digits in checks:
        if target is None:
            continue
        if value is None or (value < target if relation == ">=" else value > target):
            missed.append(f"{name} {what} {fixed_or_dash(value, digits)}, target {relation} {target:.{digits}f}")
    return missed
