"""The Fast DDS profile that keeps traffic on this machine must load: Fast DDS ignores a profile file it cannot parse
and falls back to its default transports (UDP, multicast on every interface), saying so only on stderr."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

from egox_ros.ros.dds import SHM_PROFILE, isolated_env

PROBE = """
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("egox_profile_probe")
node.create_publisher(String, "probe", 10)
node.create_subscription(String, "probe", lambda m: None, 10)
node.destroy_node()
rclpy.shutdown()
print("probe ok")
"""


def test_shared_memory_profile_loads_without_errors():
    run = subprocess.run([sys.executable, "-c", PROBE], env=isolated_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "probe ok" in run.stdout, run.stderr
    assert "XMLPARSER" not in run.stderr and "Error" not in run.stderr, run.stderr
    text = SHM_PROFILE.read_text()
    assert "<useBuiltinTransports>false</useBuiltinTransports>" in text and "<type>SHM</type>" in text


# --------------------------------------------------------------- nothing binds outside loopback
def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))   # 4 host-order words


def inet_sockets(pids: list[int]) -> list[tuple[str, str, int]]:
    """(protocol, local address, local port) of every UDP / TCP socket (IPv4 and IPv6) the processes `pids` hold,
    read from /proc (what `ss -uapn` / `ss -tapn` show, without needing iproute2)."""
    found = []
    for pid in pids:
        inodes = _socket_inodes(pid)
        for proto in ("udp", "udp6", "tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if int(fields[9]) in inodes:
                    host, port = fields[1].split(":")
                    found.append((proto, str(_address(host)), int(port, 16)))
    return found


def _outside_loopback(sockets):
    return [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]


def _process_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry))
    return pids


HOLD = """
import sys, rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("egox_socket_probe")
node.create_publisher(String, "probe", 10)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_reader_sees_outward_sockets():
    """The /proc reader finds a socket bound to 0.0.0.0 (so the tests below can fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
        assert ("udp", "0.0.0.0", port) in _outside_loopback(inet_sockets([os.getpid()]))


def test_isolated_participant_opens_no_socket_even_from_a_networked_environment():
    """A participant started with isolated_env() opens no UDP or TCP socket at all, even from an environment that
    asks for localhost discovery (rmw_fastrtps adds UDP locators for it), static peers or a discovery server."""
    hostile = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "192.0.2.1",
               "ROS_DISCOVERY_SERVER": "192.0.2.1:11811", "ROS_LOCALHOST_ONLY": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD], env=isolated_env(base=hostile), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        assert inet_sockets(_process_group(proc.pid)) == []
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_node_and_peer_bind_nothing_outside_loopback(peer, tmp_path):
    """The egox node as the tests and the replay start it (a process with the isolated environment) and the test
    process's own participant talk (the node's latched progress arrives, so discovery worked) with no socket bound
    outside 127.0.0.0/8 or ::1; the node opens no UDP socket at all."""
    from egox_msgs.msg import NodeProgress

    from conftest import NodeProcess, wait_until
    from egox_ros.ros.node import PROGRESS_QOS
    peer.collect(NodeProgress, "/egox/progress", PROGRESS_QOS)
    node = NodeProcess(tmp_path)
    try:
        wait_until(lambda: node.proc.poll() is not None or peer.messages("/egox/progress"), 60,
                   "the node's progress over shared memory")
        assert node.proc.poll() is None, node.log()[-3000:]
        node_sockets = inet_sockets(_process_group(node.proc.pid))
        assert _outside_loopback(node_sockets) == [], node_sockets
        assert [s for s in node_sockets if s[0].startswith("udp")] == [], node_sockets
        own = inet_sockets([os.getpid()])
        assert _outside_loopback(own) == [], own
    finally:
        node.stop()
