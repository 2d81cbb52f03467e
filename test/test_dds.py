"""The Fast DDS profile that keeps traffic on this machine must load: Fast DDS ignores a profile file it cannot parse
and falls back to its default transports (UDP, multicast on every interface), saying so only on stderr."""
from __future__ import annotations

import subprocess
import sys

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
