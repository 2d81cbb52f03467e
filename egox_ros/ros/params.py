"""Declare a config dataclass as ROS parameters (with descriptors and ranges) and build it back from their values."""
from __future__ import annotations

import dataclasses
import difflib
from typing import TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

T = TypeVar("T")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _descriptor(f: dataclasses.Field, default) -> ParameterDescriptor:
    meta = f.metadata
    text = meta.get("help", "")
    if meta.get("choices"):
        text += f" (one of: {', '.join(meta['choices'])})"
    descriptor = ParameterDescriptor(description=text, read_only=True)
    lo_hi = meta.get("range")
    if lo_hi is not None:
        item = default[0] if isinstance(default, list) and default else default
        if isinstance(item, bool):
            pass
        elif isinstance(item, int):
            descriptor.integer_range = [IntegerRange(from_value=int(lo_hi[0]), to_value=int(lo_hi[1]), step=1)]
        elif isinstance(item, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(lo_hi[0]),
                                                                  to_value=float(lo_hi[1]), step=0.0)]
            descriptor.dynamic_typing = True  # accept `fx: 224` in YAML; the config coerces to float
    return descriptor


def declare_config(node: Node, section: str, cls: type[T]) -> T:
    """Declare `<section>.<field>` for every field of `cls`, then return `cls` built from the values.

    Raises ValueError (from the config's validation) naming the offending parameter.
    """
    values = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        name = f"{section}.{f.name}"
        value = node.declare_parameter(name, default, _descriptor(f, default)).value
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, list):
            as_float = bool(default) and isinstance(default[0], float)
            value = [float(v) if as_float else v for v in value]
        values[f.name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid parameters in section '{section}': {e}") from e


ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service", "qos_overrides.")


def unknown_parameter_warnings(node: Node) -> list[str]:
    """One line per parameter set for this node (command line, params file) that it never declared: a typo would
    otherwise be silently ignored. Names the closest declared parameter when there is one."""
    declared = set(node._parameters)                      # rclpy keeps declared parameters here
    lines = []
    for name in sorted(node._parameter_overrides):       # ... and the overrides given to the node here
        if name in declared or name.startswith(ROS_OWN_PARAMETERS):
            continue
        close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else "; `egox config` lists every parameter"
        lines.append(f"unknown parameter '{name}' is ignored{hint}")
    return lines
