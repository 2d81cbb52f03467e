"""Read back a bag this project has just written, so a damaged output is an error at the end of the run and never
found later by the user (egox process / batch / replay call it after closing their writer).

Light module: rosbags is imported on use."""
from __future__ import annotations

from pathlib import Path


def read_back_problem(bag: Path, expected_counts: dict[str, int]) -> str | None:
    """None when every message of `bag` (a rosbag2 folder) reads back (each MCAP chunk is decompressed and its
    size checked) and each topic holds exactly `expected_counts[topic]` messages (topics with 0 may be absent);
    else one line saying what is wrong."""
    from rosbags.highlevel import AnyReader
    counts: dict[str, int] = {}
    try:
        with AnyReader([Path(bag)]) as reader:
            for connection, _, _ in reader.messages():
                counts[connection.topic] = counts.get(connection.topic, 0) + 1
    except Exception as e:  # noqa: BLE001 - rosbags raises several types for damaged bags
        read = sum(counts.values())
        return (f"the output bag {bag} does not read back after {read} of {sum(expected_counts.values())} "
                f"messages: {type(e).__name__}: {e}".replace("\n", " "))
    wrong = {topic: (counts.get(topic, 0), n) for topic, n in expected_counts.items() if counts.get(topic, 0) != n}
    wrong.update({topic: (n, 0) for topic, n in counts.items() if topic not in expected_counts})
    if wrong:
        detail = ", ".join(f"{topic} {got} read back, {want} written" for topic, (got, want) in sorted(wrong.items()))
        return f"the output bag {bag} reads back with other message counts than were written: {detail}"
    return None
