"""What a newcomer reads first: `egox node / launch / sample --help` list their arguments, and the README's parameter
table names every parameter the node declares (the real command line, the real dataclasses)."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

from conftest import REPO
from egox_ros.ros.config import parameter_sections
from egox_ros.ros.launch_spec import LAUNCH_ARGUMENTS


def egox_help(*command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "egox_ros.cli", *command, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def readme_parameter_table() -> dict[str, str]:
    """Section -> the text of its row in README.md's parameter table."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| section | what it sets |"):]
    rows = {}
    for line in table[:table.index("\n\n")].splitlines()[2:]:
        cells = line.split("|")
        rows[cells[1].strip().strip("`")] = cells[2]
    return rows


def test_readme_parameter_table_names_every_declared_parameter():
    rows = readme_parameter_table()
    missing = []
    for section, cls in parameter_sections().items():
        assert section in rows, f"README's parameter table has no row for section {section!r}"
        # names in backticks; a `prefix_*` stands for every name with that prefix
        listed = [re.compile(re.escape(n).replace(r"\*", ".*") + "$") for n in re.findall(r"`([a-z0-9_*]+)`",
                                                                                           rows[section])]
        missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls)
                    if not any(p.match(f.name) for p in listed)]
    assert not missing, f"README's parameter table does not mention: {', '.join(missing)}"
    assert set(rows) == set(parameter_sections()), sorted(set(rows) ^ set(parameter_sections()))


def test_node_help_lists_the_ros_arguments_and_every_parameter():
    text = egox_help("node")
    # the node's own executable (`ros2 run egox_ros egox_node --help`) says the same instead of starting
    done = subprocess.run([sys.executable, "-m", "egox_ros.ros.node", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == text, done.stdout[-2000:] + done.stderr[-2000:]
    for argument in ("--ros-args", "-p SECTION.NAME:=VALUE", "--params-file FILE", "-r FROM:=TO", "__ns:="):
        assert argument in text, argument
    for section, cls in parameter_sections().items():
        block = text[text.index(f"  {section}: "):]
        for f in dataclasses.fields(cls):
            assert re.search(rf"\b{f.name}=", block), f"{section}.{f.name} missing from egox node --help"


def test_launch_help_lists_the_launch_arguments_with_defaults():
    text = egox_help("launch")
    for argument in LAUNCH_ARGUMENTS:
        assert f"{argument.name}:={argument.default!r}" in text and argument.description in text, argument.name


def test_sample_help_lists_its_options():
    text = egox_help("sample")
    assert text.startswith("usage: egox sample")
    for option in ("--source", "--output", "--head-offset", "--scale", "--first-frame", "--no-head-tf", "--force"):
        assert option in text, option
