"""`egox launch` (the launch file's twin), the parameter file and the package manifest."""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys

import yaml
from sensor_msgs.msg import Image

from conftest import REPO, wait_until
from egox_ros.ros.config import default_parameters_yaml, parameter_sections
from egox_ros.ros.launch_spec import LAUNCH_ARGUMENTS, NODES


def test_config_file_lists_every_parameter_with_its_default():
    assert (REPO / "config" / "egox.yaml").read_text() == default_parameters_yaml(), \
        "config/egox.yaml is stale: regenerate it with `./egox config > config/egox.yaml`"
    params = yaml.safe_load((REPO / "config" / "egox.yaml").read_text())["/**"]["ros__parameters"]
    assert set(params) == set(parameter_sections())


def test_launch_file_is_built_from_the_shared_spec():
    tree = ast.parse((REPO / "launch" / "egox.launch.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "egox_ros.ros.launch_spec"
                for a in n.names}
    assert {"LAUNCH_ARGUMENTS", "NODES"} <= imported
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in ast.walk(tree))
    assert {a.name for a in LAUNCH_ARGUMENTS} >= {"params_file", "use_sim_time", "exo_image", "namespace"}


def test_egox_launch_starts_the_node_with_remappings_and_namespace(peer, tmp_path):
    log = open(tmp_path / "launch.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "egox_ros.cli", "launch", "exo_image:=/camera/color/image_raw",
                             "namespace:=robot1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        pub = peer.publisher(Image, "/camera/color/image_raw")
        wait_until(lambda: pub.get_subscription_count() > 0, 30, "the launched node to subscribe to the remapped topic")
        names = wait_until(lambda: [n for n in peer.node.get_node_names_and_namespaces() if n[0] == NODES[0].name], 10,
                           "the launched node in the graph")
        assert ("egox", "/robot1") in names
        # The node creates its publishers after its subscriptions: wait for discovery to report them.
        wait_until(lambda: "/robot1/ego/image_raw" in dict(peer.node.get_topic_names_and_types()), 30,
                   "the launched node's ego/image_raw publisher under the namespace")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
        log.close()


def test_package_xml_declares_what_the_code_imports():
    xml = (REPO / "package.xml").read_text()
    for dep in ("rclpy", "sensor_msgs", "geometry_msgs", "diagnostic_msgs", "tf2_msgs", "egox_msgs", "std_msgs",
                "rosgraph_msgs", "builtin_interfaces", "launch_ros"):
        assert f"<exec_depend>{dep}</exec_depend>" in xml, dep
