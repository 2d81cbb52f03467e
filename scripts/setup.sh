#!/usr/bin/env bash
# Set up egox_ros from nothing on a machine without ROS 2 (see docs/ros2-from-pypi notes in README):
#   1. .venv in the repo with ROS 2 Kilted from PyPI wheels, torch (CPU) and the project's dependencies;
#   2. the interface packages in msg/ (egox_msgs, and tf2_msgs where it is missing) built with CMake into the venv;
#   3. egox_ros installed (editable) with its console scripts `egox` and `egox_node` in .venv/bin;
#   4. colcon (requirements-colcon.txt), for test/test_colcon_layout.py and colcon workspaces on this machine;
#   5. Ray (requirements-ray.txt), for `egox batch` and generator.backend ray only; nothing else imports it;
#   6. for the tests only, where ../shared/ros2-cli exists (EGOX_ROS2_CLI names another folder): the ROS 2 command
#      line tools and launch (`ros2 launch/run/param/node/topic`, launch, launch_ros: wheels built from upstream, not
#      on PyPI) and composition_interfaces (built into the venv like msg/), which test/test_colcon_layout.py runs.
# Idempotent: a second run compares a hash of its inputs with the last successful run and returns in about a second.
# Usage: scripts/setup.sh [--force]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.egox_setup_stamp"
py="${PYTHON:-python3}"
ros2cli="${EGOX_ROS2_CLI:-$root/../shared/ros2-cli}"   # test-only wheels of the ros2 tools (step 6)

inputs_hash() {
  (cd "$root" && cat scripts/setup.sh requirements.txt requirements-colcon.txt requirements-ray.txt requirements-no-deps.txt setup.py setup.cfg package.xml \
     $(find msg -type f | LC_ALL=C sort); ls -l "$ros2cli" 2>/dev/null || true) | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log() { printf '\033[1m[egox setup]\033[0m %s\n' "$*" >&2; }
trap 'log "setup failed (scripts/setup.sh line $LINENO); run it again, or with --force for a full rebuild"' ERR
quiet_pip() { "$venv/bin/python" -m pip "$@" 2>&1 | grep -vE "is ignored: it is neither a file nor a directory" || true; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  "$py" -m venv "$venv"
fi
log "installing dependencies (requirements.txt, requirements-colcon.txt, requirements-ray.txt)"
quiet_pip install -q --disable-pip-version-check -r "$root/requirements.txt" -r "$root/requirements-colcon.txt" \
  -r "$root/requirements-ray.txt"
quiet_pip install -q --disable-pip-version-check --no-deps -r "$root/requirements-no-deps.txt"
"$venv/bin/python" -c "import rclpy, torch, mediapipe, colcon_ros, ray" || { log "dependency install failed"; exit 1; }

# The wheels' exported CMake files name the wheel build machine's Python and numpy headers; point them here.
py_inc="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_inc="$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')"
{ grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$venv/share" 2>/dev/null || true; } \
  | xargs -0 -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_inc}#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g"

build_interfaces() {  # build_interfaces PACKAGE_DIR
  local pkg="$1" name; name="$(basename "$pkg")"
  log "building interface package $name into the venv"
  local out="$root/build/msg/$name"
  (
    export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
    cmake -S "$pkg" -B "$out" -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$venv/bin/python" \
      -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$out.log" 2>&1 \
    && cmake --build "$out" -j "$(nproc)" >>"$out.log" 2>&1 \
    && cmake --install "$out" >>"$out.log" 2>&1
  ) || { tail -n 40 "$out.log" >&2; log "building $name failed; full log: $out.log"; exit 1; }
}
mkdir -p "$root/build/msg"
if ! AMENT_PREFIX_PATH="$venv" "$venv/bin/python" -c "import tf2_msgs.msg" 2>/dev/null \
   || [[ -f "$venv/share/tf2_msgs/.built_by_egox" ]]; then
  build_interfaces "$root/msg/tf2_msgs"
  touch "$venv/share/tf2_msgs/.built_by_egox"
fi
build_interfaces "$root/msg/egox_msgs"

if [[ -d "$ros2cli" ]]; then
  log "installing the ros2 command-line tools and launch for the tests ($ros2cli)"
  quiet_pip install -q --disable-pip-version-check --no-deps "$ros2cli"/*.whl
  build_interfaces "$ros2cli/src/composition_interfaces"
  "$venv/bin/python" -c "import launch_ros.actions, ros2cli.cli, composition_interfaces.srv" \
    || { log "the ros2 tools do not import"; exit 1; }
else
  log "no $ros2cli: the ros2 command-line tools are not installed (their tests in test/test_colcon_layout.py are skipped)"
fi

log "installing egox_ros (editable)"
quiet_pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -c "import egox_msgs.msg, tf2_msgs.msg, egox_ros" \
  || { log "installed packages do not import"; exit 1; }
log "compiling the soft-splat and voxel kernels (numba, cached on disk)"
"$venv/bin/python" -c "from egox_ros.core.geometry import soft_kernel, voxel_kernel
assert soft_kernel.warm_up() and voxel_kernel.warm_up()" \
  || { log "the soft-splat or voxel kernel does not compile"; exit 1; }
echo "$want" > "$stamp"
log "ready: $venv/bin/egox"
