"""A real colcon workspace with this repository under src/: the README's commands find and build both packages
(egox_ros: ament_python, msg/egox_msgs: ament_cmake + rosidl), rosdep sees both with the README's paths, and the
install space works under the real ROS 2 tools: `ros2 launch egox_ros egox.launch.py` (the design card's command),
`ros2 run`, `ros2 node`, `ros2 topic` and `ros2 param`.

colcon and rosdep come from requirements-colcon.txt, launch/launch_ros/ros2cli from the test-only wheels in
../shared/ros2-cli (both installed by scripts/setup.sh); nothing is downloaded here. About a minute on 2 cores, most
of it the rosidl build of egox_msgs and two node starts (1.5-2.5 min measured under load 9).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, LoggedProcess, wait_until

# The commands the README documents (test_readme_documents_the_tested_commands keeps them in step).
BASE_PATHS = "--base-paths src src/egox_ros/msg"
WORKSPACE_DEFAULTS = """\
build:
  base-paths: [src, src/egox_ros/msg]
list:
  base-paths: [src, src/egox_ros/msg]
test:
  base-paths: [src, src/egox_ros/msg]
"""
ROSDEP_PATHS = "--from-paths src src/egox_ros/msg"
# Only needed with the PyPI wheels (no system ROS 2): point CMake at the venv's Python.
CMAKE_ARGS_FOR_WHEELS = ["--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"]

VENV = Path(sys.prefix)
COLCON = Path(sys.executable).parent / "colcon"
if not COLCON.is_file():
    COLCON = Path(shutil.which("colcon") or COLCON)

pytestmark = pytest.mark.skipif(
    not COLCON.is_file(),
    reason="colcon is not installed (scripts/setup.sh installs it from requirements-colcon.txt)")


def _workspace_env(home: Path) -> dict[str, str]:
    env = os.environ.copy()  # DDS already kept on this machine by conftest (nothing here starts a node)
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(VENV),
        # The wheels' prefix is the venv; with a system ROS 2 this is what sourcing its setup.bash sets.
        AMENT_PREFIX_PATH=os.pathsep.join(p for p in (str(VENV), env.get("AMENT_PREFIX_PATH", "")) if p),
        CMAKE_PREFIX_PATH=os.pathsep.join(p for p in (str(VENV), env.get("CMAKE_PREFIX_PATH", "")) if p),
        COLCON_HOME=str(home),  # no user-wide colcon defaults or mixins
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def _attempt(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    done = _attempt(cmd, cwd, env, timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-6000:]}"
    return done.stdout


def _with_setup(script: str) -> list[str]:
    """A bash snippet run with the workspace's install/setup.bash sourced (what a user does before ros2 run)."""
    return ["bash", "-c", f"source install/setup.bash && {script}"]


def _sourced(ws: Path, script: str, env: dict[str, str]) -> str:
    return _run(_with_setup(script), ws, env, timeout=300)


def _sourced_attempt(ws: Path, script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """_sourced without the exit-status check: for probes that are tried again (a `ros2` tool that fails or
    crashes, as `ros2 node list` once did with SIGSEGV in a fresh-clone run, is asked again, not taken for an
    answer)."""
    return _attempt(_with_setup(script), ws, env, timeout=300)


def _ros2(ws: Path, env: dict[str, str], command: str, expect: str, timeout_s: float = 180) -> str:
    """The output of a `ros2 ...` command once it contains `expect`: run again while it does not (on a busy machine
    a node's parameter services can be discovered well after the node itself); fails with the last output."""
    last = [""]

    def attempt():
        done = _sourced_attempt(ws, command, env)
        last[0] = done.stdout
        return done.stdout if expect in done.stdout else None
    found = wait_until(attempt, timeout_s, interval_s=1.0, raise_on_timeout=False)
    if found is None:
        pytest.fail(f"`{command}` never printed {expect!r} in {timeout_s} s; last output:\n{last[0][-3000:]}")
    return found


def _listed(output: str) -> dict[str, tuple[str, str]]:
    rows = [line.split("\t") for line in output.splitlines() if line.count("\t") == 2]
    return {name: (path, kind) for name, path, kind in rows}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """ws/src/egox_ros: a copy of the checkout as a clone would have it (no venv, build output or sample bag)."""
    ws = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO, ws / "src" / "egox_ros", symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "install", "log", "out", "sample", "__pycache__", "*.egg-info", ".pytest_cache"))
    return ws, _workspace_env(ws / "colcon_home")


@pytest.fixture(scope="module")
def built(workspace):
    ws, env = workspace
    _run([str(COLCON), "build", *BASE_PATHS.split(), "--event-handlers", "console_direct-",
          *CMAKE_ARGS_FOR_WHEELS], ws, env)
    return ws, env


def test_colcon_list_finds_both_packages_with_the_documented_base_paths(workspace):
    ws, env = workspace
    plain = _listed(_run([str(COLCON), "list"], ws, env))
    assert set(plain) == {"egox_ros"}, "colcon does not look inside a package folder: without base paths only " \
                                       f"egox_ros is found ({plain}); if this changes, simplify the README"
    found = _listed(_run([str(COLCON), "list", *BASE_PATHS.split()], ws, env))
    assert found == {"egox_ros": ("src/egox_ros", "(ros.ament_python)"),
                     "egox_msgs": ("src/egox_ros/msg/egox_msgs", "(ros.ament_cmake)")}, found
    # msg/tf2_msgs is only for machines without ROS 2 (COLCON_IGNORE); it must never shadow the real one.
    assert "tf2_msgs" not in found


def test_workspace_defaults_file_makes_plain_colcon_commands_find_both(workspace, tmp_path):
    ws, env = workspace
    other = tmp_path / "ws"
    (other / "src").mkdir(parents=True)
    (other / "src" / "egox_ros").symlink_to(ws / "src" / "egox_ros")
    (other / "colcon_defaults.yaml").write_text(WORKSPACE_DEFAULTS)
    assert set(_listed(_run([str(COLCON), "list"], other, env))) == {"egox_ros", "egox_msgs"}


def test_colcon_build_installs_what_ros2_run_and_launch_look_for(built):
    ws, env = built
    install = ws / "install"
    for executable in ("egox_node", "egox"):
        path = install / "egox_ros" / "lib" / "egox_ros" / executable
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing or not executable"
    share = install / "egox_ros" / "share"
    for relative in ("egox_ros/package.xml", "egox_ros/launch/egox.launch.py", "egox_ros/config/egox.yaml",
                     "ament_index/resource_index/packages/egox_ros"):
        assert (share / relative).is_file(), relative
    assert (install / "egox_msgs" / "share" / "ament_index" / "resource_index" / "packages" / "egox_msgs").is_file()

    # With the workspace sourced, both Python packages come from the install space, and the installed console
    # script runs.
    found = json.loads(_sourced(ws, """python -c '
import json, egox_ros, egox_msgs.msg as m
from ament_index_python.packages import get_package_prefix, get_package_share_directory
m.ClipMetadata(); m.NodeProgress()
print(json.dumps({"egox_ros": egox_ros.__file__, "egox_msgs": m.__file__,
                  "prefix": get_package_prefix("egox_ros"), "share": get_package_share_directory("egox_msgs")}))'
""", env).strip().splitlines()[-1])
    assert Path(found["egox_ros"]).is_relative_to(install / "egox_ros"), found
    assert Path(found["egox_msgs"]).is_relative_to(install / "egox_msgs"), found
    assert Path(found["prefix"]) == install / "egox_ros"
    assert Path(found["share"]) == install / "egox_msgs" / "share" / "egox_msgs"
    assert "usage: egox" in _sourced(ws, "install/egox_ros/lib/egox_ros/egox --help", env)


# The real ROS 2 tools: launch, launch_ros and ros2cli (ros2 launch/run/param/node/topic) are not on PyPI;
# scripts/setup.sh installs the wheels built from upstream in ../shared/ros2-cli (with composition_interfaces, which
# launch_ros imports) into the venv, the way a ROS 2 install provides them.
ROS2 = VENV / "bin" / "ros2"
needs_ros2 = pytest.mark.skipif(not ROS2.is_file(), reason="the ros2 tools are not installed (scripts/setup.sh "
                                                          "installs them from ../shared/ros2-cli)")


@pytest.fixture
def ros2_env(built, tmp_path):
    """(workspace, environment) for the ros2 tools. They start the ros2 daemon as they do for a user (in this test's
    isolated DDS environment); it is stopped afterwards, so no test leaves a process behind."""
    ws, env = built
    env = {**env, "ROS_HOME": str(tmp_path / "ros_home"), "ROS_LOG_DIR": str(tmp_path / "ros_log")}
    yield ws, env
    subprocess.run(_with_setup("ros2 daemon stop"), cwd=ws, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def _started(ws: Path, env: dict[str, str], command: str, log: Path) -> LoggedProcess:
    """A command run with the workspace sourced, in its own session (stop(): SIGINT, as Ctrl-C to ros2 launch)."""
    return LoggedProcess(_with_setup(f"exec {command}"), log, stop_timeout_s=30, cwd=ws, env=env)


def _wait_for_node(ws: Path, env: dict[str, str], name: str, started: LoggedProcess) -> None:
    def listed():
        assert started.proc.poll() is None, f"exited ({started.proc.returncode}):\n{started.log()[-4000:]}"
        done = _sourced_attempt(ws, "ros2 node list", env)
        return done.returncode == 0 and name in done.stdout.split()
    wait_until(listed, timeout_s=180, interval_s=0.5, what=f"{name} in `ros2 node list`")


@needs_ros2
def test_ros2_launch_starts_the_installed_node_with_its_arguments(ros2_env, tmp_path):
    """The design card's command, `ros2 launch egox_ros egox.launch.py`, with real launch/launch_ros: the launch
    arguments are declared, the node is the installed executable, namespace, remap and params_file reach it."""
    ws, env = ros2_env
    shown = _sourced(ws, "ros2 launch egox_ros egox.launch.py --show-args", env)
    for argument in ("params_file", "namespace", "use_sim_time", "exo_image", "exo_camera_info", "exo_depth",
                     "head_pose"):
        assert f"'{argument}':" in shown, shown
    params = tmp_path / "mine.yaml"
    params.write_text("/**:\n  ros__parameters:\n    sync:\n      timeout_s: 2.5\n")
    launch = _started(ws, env, f"ros2 launch egox_ros egox.launch.py namespace:=robot1 use_sim_time:=true "
                               f"exo_image:=/cam/color/image_raw params_file:={params}", tmp_path / "launch.log")
    try:
        _wait_for_node(ws, env, "/robot1/egox", launch)
        _ros2(ws, env, "ros2 param get /robot1/egox sync.timeout_s", "Double value is: 2.5")
        _ros2(ws, env, "ros2 param get /robot1/egox use_sim_time", "Boolean value is: True")
        info = _ros2(ws, env, "ros2 topic info -v /cam/color/image_raw", "Node namespace: /robot1")
        assert "Node name: egox" in info and "SUBSCRIPTION" in info, info
        _ros2(ws, env, "ros2 topic list", "/robot1/exo/camera_info")   # not remapped: in the namespace
        pid = int(re.search(r"\[egox_node-1\]: process started with pid \[(\d+)\]", launch.log()).group(1))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        installed = str(ws / "install" / "egox_ros" / "lib" / "egox_ros" / "egox_node").encode()
        assert installed in cmdline, cmdline
    finally:
        launch.stop()
    assert "[egox_node-1]: process has finished cleanly" in launch.log(), launch.log()[-4000:]


@needs_ros2
def test_ros2_run_and_ros2_param_against_the_installed_node(ros2_env, tmp_path):
    ws, env = ros2_env
    node = _started(ws, env, "ros2 run egox_ros egox_node --ros-args -r __node:=egox_run "
                             "-p fusion.window_frames:=3", tmp_path / "run.log")
    try:
        _wait_for_node(ws, env, "/egox_run", node)
        _ros2(ws, env, "ros2 param get /egox_run fusion.window_frames", "Integer value is: 3")
        described = _ros2(ws, env, "ros2 param describe /egox_run fusion.window_frames", "Type: integer")
        assert "Min value: 1" in described and "Read only: true" in described, described
        refused = _ros2(ws, env, "ros2 param set /egox_run fusion.window_frames 5", "Setting parameter failed")
        assert "read-only" in refused, refused
        dumped = yaml.safe_load(_ros2(ws, env, "ros2 param dump /egox_run", "ros__parameters"))
        values = dumped["/egox_run"]["ros__parameters"]
        from egox_ros.ros.config import parameter_sections
        assert values["fusion"]["window_frames"] == 3
        assert values["sync"]["timeout_s"] == pytest.approx(parameter_sections()["sync"]().timeout_s)   # default
        assert set(parameter_sections()) <= set(values), sorted(values)   # every section, as the node declares
        assert node.proc.poll() is None, "the node died under ros2 param"
    finally:
        node.stop()
    assert "usage: egox" in _sourced(ws, "ros2 run egox_ros egox --help", env)


ROSDEP_SOURCE = "python3-numpy: {debian: [python3-numpy], ubuntu: [python3-numpy]}\n"


def test_rosdep_needs_the_msg_base_path_too(workspace, tmp_path):
    """rosdep (like colcon) does not look inside a package folder: `rosdep install --from-paths src --ignore-src`
    takes egox_msgs for a system package and misses its build dependencies; the README's command names
    src/egox_ros/msg as well. rosdep runs here against a local source list (nothing downloaded)."""
    rosdep = VENV / "bin" / "rosdep"
    if not rosdep.is_file():
        pytest.skip("rosdep is not installed (scripts/setup.sh installs it from requirements-colcon.txt)")
    ws, env = workspace
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (tmp_path / "base.yaml").write_text(ROSDEP_SOURCE)
    (sources / "10-local.list").write_text(f"yaml file://{tmp_path / 'base.yaml'}\n")
    (tmp_path / "index.yaml").write_text("%YAML 1.1\n---\ntype: index\nversion: 4\ndistributions: {}\n")
    # Nothing sourced: --ignore-src also skips packages installed on AMENT_PREFIX_PATH (the venv has egox_msgs).
    env = {k: v for k, v in env.items() if k not in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "ROS_PACKAGE_PATH")}
    env.update(HOME=str(tmp_path), ROS_HOME=str(tmp_path / "ros_home"), ROSDEP_SOURCE_PATH=str(sources),
               ROSDISTRO_INDEX_URL=f"file://{tmp_path / 'index.yaml'}", ROS_PYTHON_VERSION="3")
    _run([str(rosdep), "update"], ws, env)
    plain = set(_run([str(rosdep), "keys", "--from-paths", "src", "--ignore-src"], ws, env).split())
    assert "egox_msgs" in plain and "rosidl_default_generators" not in plain, sorted(plain)
    both = set(_run([str(rosdep), "keys", *ROSDEP_PATHS.split(), "--ignore-src"], ws, env).split())
    assert "egox_msgs" not in both and {"rosidl_default_generators", "ament_cmake", "rclpy"} <= both, sorted(both)


def test_symlink_install_also_puts_the_executables_in_lib(workspace):
    """`colcon build --symlink-install` (setup.py develop: setup.cfg's [develop] script_dir), egox_ros alone
    (without the base paths egox_msgs is not in the workspace, as when it comes from elsewhere)."""
    ws, env = workspace
    _run([str(COLCON), "build", "--symlink-install", "--packages-select", "egox_ros",
          "--build-base", "build_symlink", "--install-base", "install_symlink", "--event-handlers", "console_direct-"],
         ws, env)
    for executable in ("egox_node", "egox"):
        path = ws / "install_symlink" / "egox_ros" / "lib" / "egox_ros" / executable
        assert path.is_file() and os.access(path, os.X_OK), path
    launch_file = ws / "install_symlink" / "egox_ros" / "share" / "egox_ros" / "launch" / "egox.launch.py"
    assert launch_file.resolve().read_text() == (REPO / "launch" / "egox.launch.py").read_text()


def test_readme_documents_the_tested_commands():
    readme = (REPO / "README.md").read_text()
    assert f"colcon build {BASE_PATHS}" in readme
    assert WORKSPACE_DEFAULTS in readme
    assert " ".join(CMAKE_ARGS_FOR_WHEELS[:2]) in readme
    assert f"rosdep install {ROSDEP_PATHS} --ignore-src" in readme
