"""The package layout is the architecture (README "Layout"): every part of egox_ros.core imports only the parts
below it, the core never imports ROS, and the offline plan never imports what runs a bag. Every import counts,
also the lazy ones inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "egox_ros"

# Bottom to top; a part may import its own modules and those of the parts before it.
CORE_PARTS = [("config",), ("geometry",), ("io",), ("attention", "depth", "demonstrator"), ("egox",),
              ("generators",), ("runtime",)]
RANK = {part: rank for rank, parts in enumerate(CORE_PARTS) for part in parts}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of egox_ros or rclpy in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "egox_ros.core"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.split(".")[0] in ("egox_ros", "rclpy")]


def _core_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["egox_ros", "core"] else None


def test_every_core_module_belongs_to_a_named_part():
    strays = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / "core").iterdir()
              if p.name not in ("__init__.py", "__pycache__") and p.stem not in RANK]
    assert not strays, f"core modules or folders outside the named parts {sorted(RANK)}: {strays}"


def test_core_parts_import_only_the_parts_below_them():
    upward = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        own = _core_part("egox_ros." + ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[1:]))
        for line, module in _imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
            if module.split(".")[0] == "rclpy" or not module.startswith("egox_ros.core"):
                upward.append(where + " (the core imports neither ROS nor egox_ros outside the core)")
                continue
            target = _core_part(module)
            if own is not None and target is not None and target != own and RANK[target] >= RANK[own]:
                upward.append(where + f" ({own} may import only {[p for p in RANK if RANK[p] < RANK[own]]})")
    assert not upward, "\n".join(upward)


def test_the_offline_plan_imports_nothing_that_runs_a_bag():
    plan = PACKAGE / "ros" / "offline" / "plan.py"
    circular = [f"plan.py:{line} imports {m}" for line, m in _imports(plan)
                if m.startswith("egox_ros.ros.offline.") and m != "egox_ros.ros.offline.plan"]
    assert not circular, circular


def test_no_module_is_long_without_a_stated_reason():
    """About 500 lines at most; a longer module says why in its docstring ('on purpose')."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 520 and "on purpose" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(PACKAGE.parent)} ({text.count(chr(10))} lines)")
    assert not long, long
