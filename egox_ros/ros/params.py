"""Declare a config dataclass as ROS parameters (with descriptors and ranges) and build it back from their values."""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TypeVar

import yaml
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
    return _build(section, cls, lambda name, default, f: node.declare_parameter(
        name, default, _descriptor(f, default)).value)


def _build(section: str, cls: type[T], value_of) -> T:
    """`cls` from value_of(name, default, field) per field, with ROS's numeric coercions (an integer for a float)."""
    values = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        value = value_of(f"{section}.{f.name}", default, f)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, list):
            as_float = bool(default) and isinstance(default[0], float)
            value = [float(v) if as_float and not isinstance(v, bool) and isinstance(v, int) else v for v in value]
        values[f.name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid parameters in section '{section}': {e}") from e


def _type_name(value) -> str:
    return {bool: "bool", int: "integer", float: "double", str: "string", list: "array"}.get(type(value), "other")


def load_parameters(params_file: str | Path | None, overrides: list[str], node_name: str = "egox") -> dict:
    """The node's parameters as `ros2 run ... --ros-args --params-file F -p a:=b` would set them, without a ROS
    graph: {'section.field': value} from the file's `/**`, `egox` or `/egox` sections (nested keys joined with
    dots), then the `name:=value` overrides (values parsed as YAML, as ROS does)."""
    values: dict = {}
    if params_file is not None:
        doc = yaml.safe_load(Path(params_file).read_text()) or {}
        for key, block in doc.items():
            if key.strip("/") in ("**", node_name) and isinstance(block, dict):
                _flatten(block.get("ros__parameters") or {}, "", values)
    for item in overrides:
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"parameter override {item!r} is not NAME:=VALUE")
        values[name] = yaml.safe_load(text)
    return values


def _flatten(block: dict, prefix: str, out: dict) -> None:
    for key, value in block.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        else:
            out[f"{prefix}{key}"] = value


def configs_from_parameters(values: dict, sections: dict[str, type]) -> tuple[dict[str, object], list[str]]:
    """Every section's config from parameter values (load_parameters), checked as the node checks them: a value of
    another type than the default's raises ValueError naming the parameter; unknown names come back as warnings
    (with the closest valid name), as the node logs them."""
    used = set()

    def value_of(name, default, _field):
        if name not in values:
            return default
        used.add(name)
        value = values[name]
        numeric = isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        if type(value) is not type(default) and not numeric:
            raise ValueError(f"parameter '{name}' must be {_type_name(default)}, got {value!r} "
                             f"({_type_name(value)})")
        return value
    configs = {section: _build(section, cls, value_of) for section, cls in sections.items()}
    declared = {f"{section}.{f.name}" for section, cls in sections.items() for f in dataclasses.fields(cls)}
    warnings = []
    for name in sorted(set(values) - used):
        if name.startswith(ROS_OWN_PARAMETERS):
            continue
        warnings.append(_unknown(name, declared))
    return configs, warnings


ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service", "qos_overrides.")


def unknown_parameter_warnings(node: Node) -> list[str]:
    """One line per parameter set for this node (command line, params file) that it never declared: a typo would
    otherwise be silently ignored. Names the closest declared parameter when there is one."""
    declared = set(node._parameters)                      # rclpy keeps declared parameters here
    lines = []
    for name in sorted(node._parameter_overrides):       # ... and the overrides given to the node here
        if name in declared or name.startswith(ROS_OWN_PARAMETERS):
            continue
        lines.append(_unknown(name, declared))
    return lines


def _unknown(name: str, declared: set[str]) -> str:
    """The warning for a parameter nobody declared, naming the closest declared one."""
    close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; `egox config` lists every parameter"
    return f"unknown parameter '{name}' is ignored{hint}"
