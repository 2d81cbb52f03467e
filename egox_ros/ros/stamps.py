"""builtin_interfaces/Time <-> integer nanoseconds. Kept apart from conversions.py (which loads torch) so that the
replay's bag check and other light commands answer fast; works on rclpy and rosbags messages alike."""
from __future__ import annotations

from builtin_interfaces.msg import Time


def stamp_to_ns(stamp) -> int:
    """Nanoseconds of a Time (anything with .sec and .nanosec)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
