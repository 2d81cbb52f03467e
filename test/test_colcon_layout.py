"""A real colcon workspace with this repository under src/: the README's commands find and build both packages
(egox_ros: ament_python, msg/egox_msgs: ament_cmake + rosidl), and the install space has what `ros2 run` and
`ros2 launch` look for. launch/launch_ros are not on PyPI, so the installed launch file is loaded against stand-ins
for the parts of their API it uses, and the executable is looked up the way launch_ros does it
(ament_index_python: <package prefix>/lib/<package>/<executable>).

colcon comes from requirements-colcon.txt (scripts/setup.sh); nothing is downloaded here. About 20 s on 2 cores,
most of it the rosidl build of egox_msgs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

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


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-6000:]}"
    return done.stdout


def _sourced(ws: Path, script: str, env: dict[str, str]) -> str:
    """Run a bash snippet with the workspace's install/setup.bash sourced (what a user does before ros2 run)."""
    return _run(["bash", "-c", f"source install/setup.bash && {script}"], ws, env, timeout=60)


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


# Stand-ins for launch / launch_ros (their documented signatures, only what egox.launch.py uses), then the
# installed launch file is loaded, its OpaqueFunction evaluated with the arguments' defaults, and each Node's
# executable resolved as launch_ros's ExecutableInPackage does.
_LOAD_LAUNCH = r'''
import importlib.util, json, os, sys, types

def module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod

class LaunchDescription:
    def __init__(self, initial_entities=None, *, deprecated_reason=None):
        self.entities = list(initial_entities or [])

class DeclareLaunchArgument:
    def __init__(self, name, *, default_value=None, description=None, choices=None, **kwargs):
        self.name, self.default_value, self.description = name, default_value, description

class OpaqueFunction:
    def __init__(self, *, function, args=None, kwargs=None, **rest):
        self.function, self.args, self.kwargs = function, args or [], kwargs or {}

class LaunchConfiguration:
    def __init__(self, variable_name, *, default=None):
        self.variable_name = variable_name
    def perform(self, context):
        return context.launch_configurations[self.variable_name]

NODE_KEYWORDS = {"executable", "package", "name", "namespace", "exec_name", "parameters", "remappings",
                 "ros_arguments", "arguments", "output", "emulate_tty", "respawn", "respawn_delay", "condition",
                 "additional_env", "cwd", "env", "sigterm_timeout", "sigkill_timeout", "prefix"}

class Node:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - NODE_KEYWORDS
        assert not unknown, f"launch_ros.actions.Node has no arguments {unknown}"
        self.kwargs = kwargs

module("launch", LaunchDescription=LaunchDescription)
module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument, OpaqueFunction=OpaqueFunction)
module("launch.substitutions", LaunchConfiguration=LaunchConfiguration)
module("launch_ros")
module("launch_ros.actions", Node=Node)

from ament_index_python.packages import get_package_prefix

spec = importlib.util.spec_from_file_location("egox_launch", sys.argv[1])
launch_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch_file)
description = launch_file.generate_launch_description()
arguments = {e.name: e.default_value for e in description.entities if isinstance(e, DeclareLaunchArgument)}
context = types.SimpleNamespace(launch_configurations=dict(arguments))
nodes = []
for entity in description.entities:
    if isinstance(entity, OpaqueFunction):
        nodes += entity.function(context, *entity.args, **entity.kwargs)
out = []
for node in nodes:
    package, executable = node.kwargs["package"], node.kwargs["executable"]
    libexec = os.path.join(get_package_prefix(package), "lib", package)  # launch_ros: "libexec directory"
    out.append({"package": package, "executable": executable, "path": os.path.join(libexec, executable),
                "parameters": [p if isinstance(p, str) else sorted(p) for p in node.kwargs.get("parameters", [])],
                "name": node.kwargs.get("name")})
print(json.dumps({"arguments": sorted(arguments), "nodes": out}))
'''


def test_installed_launch_file_names_an_installed_executable(built, tmp_path):
    ws, env = built
    loader = tmp_path / "load_launch.py"
    loader.write_text(_LOAD_LAUNCH)
    launch_file = ws / "install" / "egox_ros" / "share" / "egox_ros" / "launch" / "egox.launch.py"
    result = json.loads(_sourced(ws, f"python {loader} {launch_file}", env).strip().splitlines()[-1])
    assert {"params_file", "use_sim_time", "exo_image"} <= set(result["arguments"])
    assert [(n["package"], n["executable"], n["name"]) for n in result["nodes"]] == [("egox_ros", "egox_node", "egox")]
    path = Path(result["nodes"][0]["path"])
    assert path == ws / "install" / "egox_ros" / "lib" / "egox_ros" / "egox_node"
    assert path.is_file() and os.access(path, os.X_OK)
    # The default parameter file is the installed one (found through the ament index), not the source tree's.
    assert result["nodes"][0]["parameters"][0] == str(ws / "install" / "egox_ros" / "share" / "egox_ros" / "config"
                                                      / "egox.yaml")


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
