"""What a folder holds, in one line, for error messages about missing or broken model folders."""
from __future__ import annotations

from pathlib import Path

_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def describe_folder(path: Path, limit: int = 20) -> str:
    """'name (size), sub/, ...' of the folder's entries (at most `limit`), or what is there instead."""
    if not path.is_dir():
        return "a file, not a folder" if path.exists() else "nothing there"
    entries = sorted(path.iterdir())
    if not entries:
        return "an empty folder"
    parts = []
    for entry in entries[:limit]:
        if entry.is_dir():
            parts.append(f"{entry.name}/")
        else:
            size = entry.stat().st_size
            unit, scale = next(((u, s) for u, s in _UNITS if size >= s), ("B", 1))
            parts.append(f"{entry.name} ({size / scale:.3g} {unit})")
    more = f", and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(parts) + more
