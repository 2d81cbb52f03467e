"""Shared fixtures: DDS isolated to this machine (shared memory only, localhost discovery, a private domain id),
the egox node as a real subprocess, and an in-process rclpy node that talks to it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from egox_ros.ros.dds import BackgroundSpin, apply_isolated_env

REPO = Path(__file__).resolve().parents[1]
TUM = REPO.parent / "shared" / "data" / "tum_rgbd"
SAMPLE_BAG = REPO / "sample" / "tum_fr1_rpy"

def require_tum():
    """egox_ros.tools.tum, or a skip (of the calling module at import time, else of the calling test) when the TUM
    RGB-D data is not there (../shared/data/tum_rgbd beside the repo, or $EGOX_TUM_DIR)."""
    tum = pytest.importorskip("egox_ros.tools.tum")
    try:
        tum.tum_root()
    except FileNotFoundError as e:
        pytest.skip(str(e), allow_module_level=True)
    return tum


# Before rclpy is imported anywhere in the test process: keep DDS on this machine, own domain per test run.
apply_isolated_env(int(os.environ.get("EGOX_TEST_DOMAIN_ID", 1 + os.getpid() % 100)))


def wait_until(predicate, timeout_s: float = 20.0, what: str = "condition", interval_s: float = 0.02,
               raise_on_timeout: bool = True):
    """Poll predicate() until it returns a truthy value (returned); on timeout fail the test naming `what`
    (or return None with raise_on_timeout=False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if not raise_on_timeout:
                return None
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by `pid` and its live descendants, and by the children they waited for (Linux /proc;
    0 without it)."""
    parents, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue                    # gone meanwhile
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(f) for f in fields[11:15]) / tick     # utime, stime, cutime, cstime
    tree, grown = {pid}, True
    while grown:
        new = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= new
        grown = bool(new)
    return sum(cpu.get(p, 0.0) for p in tree)


def run_with_progress(cmd: list[str], stall_s: float = 180.0, limit_s: float = 3600.0,
                      **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) that fails the test only when the command makes no
    progress for stall_s (no output on stdout or stderr and no CPU time used by it or its children: hung), or runs
    past limit_s. A busy machine slows a command down without stopping it; fixed 300 s limits failed under load."""
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, **kwargs)
        started = last_progress = time.monotonic()
        seen = (-1, -1, -1.0)
        while True:
            try:
                proc.wait(timeout=1.0)      # returns as soon as it exits (a fixed sleep added 0.5 s per command)
                break
            except subprocess.TimeoutExpired:
                pass
            now_seen = (os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size, _tree_cpu_s(proc.pid))
            if now_seen[:2] != seen[:2] or now_seen[2] > seen[2] + 0.05:
                seen, last_progress = now_seen, time.monotonic()
            stalled = time.monotonic() - last_progress > stall_s
            if stalled or time.monotonic() - started > limit_s:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                err.seek(0)
                pytest.fail(f"{' '.join(map(str, cmd))}: "
                            + (f"no output and no CPU time for {stall_s:g} s" if stalled else f"over {limit_s:g} s")
                            + f"; stderr:\n{err.read().decode(errors='replace')[-3000:]}")
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def run_concurrently(egox_args: list[list], workers: int = 4, **kwargs) -> list[subprocess.CompletedProcess]:
    """`egox ARGS...` (this interpreter's `python -m egox_ros.cli`) for each argument list, through run_with_progress,
    up to ``workers`` at once; results in the lists' order. For commands that exit early (refusals): most of their
    time is imports, which overlap."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(egox_args)))) as pool:
        futures = [pool.submit(run_with_progress, [sys.executable, "-m", "egox_ros.cli", *map(str, args)], **kwargs)
                   for args in egox_args]
        return [f.result() for f in futures]


class LoggedProcess:
    """A command in its own session (process group); stdout and stderr to a log file."""

    def __init__(self, cmd: list[str], log_path: Path, stop_timeout_s: float = 10.0, **popen_kwargs):
        self.log_path, self.stop_timeout_s = log_path, stop_timeout_s
        self._log = open(log_path, "w")
        popen_kwargs.setdefault("env", os.environ.copy())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     **popen_kwargs)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGINT to the whole session (as a terminal's Ctrl-C), SIGKILL after stop_timeout_s; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class NodeProcess(LoggedProcess):
    """The egox node in its own process; log captured to a file."""

    def __init__(self, tmp_path: Path, params: dict[str, object] | None = None, params_file: Path | None = None,
                 name: str = "egox", extra: list[str] | None = None):
        cmd = [sys.executable, "-m", "egox_ros.ros.node", "--ros-args", "-r", f"__node:={name}"]
        if params_file is not None:
            cmd += ["--params-file", str(params_file)]
        for key, value in (params or {}).items():
            cmd += ["-p", f"{key}:={_param_text(value)}"]
        super().__init__(cmd + (extra or []), tmp_path / f"{name}.log")


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_text(v) for v in value) + "]"
    return str(value)


@pytest.fixture(scope="module")
def rclpy_context():
    """rclpy initialised for one test module and shut down after it: the DDS participant and its threads live only
    while a module talks over DDS (a fresh clone's suite once died of a segfault in a DDS thread of this process
    while a later module ran Ray)."""
    import rclpy
    rclpy.init()
    yield
    rclpy.try_shutdown()


class TestPeer:
    """An in-process rclpy node spinning in a background thread: publishes inputs, collects outputs."""

    def __init__(self, name: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.node = rclpy.create_node(name)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self._spin = BackgroundSpin(self.executor, name="egox-test-peer")

    def collect(self, msg_type, topic: str, qos=None):
        """Subscribe and keep every message in self.received[topic]."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        qos = qos or QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.received.setdefault(topic, [])

        def keep(msg):
            with self.lock:
                self.received[topic].append(msg)
        return self.node.create_subscription(msg_type, topic, keep, qos)

    def clear(self) -> None:
        """Forget everything received so far."""
        with self.lock:
            for messages in self.received.values():
                messages.clear()

    def messages(self, topic: str) -> list:
        with self.lock:
            return list(self.received.get(topic, []))

    def publisher(self, msg_type, topic: str, qos=None):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        qos = qos or QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self):
        self._spin.stop()
        self.node.destroy_node()


@pytest.fixture
def peer(rclpy_context, request):
    p = TestPeer("egox_test_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:40])
    yield p
    p.close()
