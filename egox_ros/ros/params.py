"""Declare a config dataclass as ROS parameters (with descriptors and ranges) and build it back from their values."""
from __future__ import annotations

import dataclasses
import difflib
import re
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
    """`cls` from value_of(name, default, field) per field, with ROS's numeric coercions (an integer for a float);
    a value of another type than the default's raises ValueError naming the parameter (_checked)."""
    values = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        name = f"{section}.{f.name}"
        values[f.name] = _checked(name, default, value_of(name, default, f))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid parameters in section '{section}': {e}") from e


def _checked(name: str, default, value):
    """`value` for a parameter whose default is `default`, as the config takes it: an integer becomes a float where
    the default is one (also inside lists); any other type than the default's raises ValueError (ROS would take
    `true` or `abc` for a float parameter declared with dynamic typing)."""
    def one(item, like):
        if isinstance(like, float) and isinstance(item, int) and not isinstance(item, bool):
            return float(item)
        if type(item) is not type(like):
            raise TypeError
        return item
    try:
        if isinstance(default, list):   # rclpy hands arrays back as lists or array.array
            if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
                raise TypeError
            return [one(v, default[0]) for v in value] if default else list(value)
        return one(value, default)
    except TypeError:
        kind = _type_name(default) if not isinstance(default, list) or not default else \
            f"array of {_type_name(default[0])}"
        raise ValueError(f"parameter '{name}' must be {kind}, got {value!r} ({_type_name(value)})") from None


def _type_name(value) -> str:
    return {bool: "bool", int: "integer", float: "double", str: "string", list: "array"}.get(type(value), "other")


def node_key_matches(key: str, node_fqn: str) -> bool:
    """Whether a params file's node key applies to the node with fully qualified name `node_fqn` ('/egox',
    '/robot1/egox'), as rclpy matches them: a key without a leading '/' is absolute, '/**' stands for any number of
    namespace levels (or a whole name), '*' for one name token ('/**', '/**/egox', '/*/egox', 'egox', '/egox')."""
    pattern = "/" + str(key).lstrip("/")
    regex = re.escape(pattern).replace(r"/\*\*", r"(/[^/]+)*").replace(r"\*", r"[^/]+")
    return re.fullmatch(regex, node_fqn) is not None


class RosYamlLoader(yaml.SafeLoader):
    """YAML as rcl reads parameter values: PyYAML (YAML 1.1) takes `1e-3` and `1.0e3` for strings, rcl for doubles."""


RosYamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                   re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                   list("-+0123456789."))


def read_params_file(path: str | Path) -> dict:
    """A ROS 2 parameter file as rcl reads it ({node key: {'ros__parameters': {...}}}), checked up front so that a
    bad file is one line (ValueError) instead of rcl's parse error and a traceback: it must exist, be YAML, map node
    names (`/**`, `/**/egox`, `egox`, ...; a '*' only as a whole name token) to a mapping with `ros__parameters`,
    and not be empty."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"parameter file {path} does not exist" if not path.exists() else
                         f"parameter file {path} is not a file")
    try:
        doc = yaml.load(path.read_text(), Loader=RosYamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read parameter file {path}: {type(e).__name__}: {e}".replace("\n", " ")) from e
    example = "e.g. '/**:' then '  ros__parameters:' then '    sync:' ..."
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"parameter file {path} is not a mapping of node names to ros__parameters ({example})")
    for key, block in doc.items():
        tokens = str(key).strip("/").split("/")
        if any("*" in t and t not in ("*", "**") for t in tokens):
            raise ValueError(f"parameter file {path}: node name {key!r}: '*' and '**' must stand for whole names")
        if not isinstance(block, dict) or not isinstance(block.get("ros__parameters"), dict):
            raise ValueError(f"parameter file {path}: section {key!r} has no ros__parameters mapping ({example})")
    return doc


def load_parameters(params_file: str | Path | None, overrides: list[str], node_name: str = "egox") -> dict:
    """The node's parameters as `ros2 run ... --ros-args --params-file F -p a:=b` would set them, without a ROS
    graph: {'section.field': value} from the file's sections whose key matches the node `/<node_name>` (`/**`,
    `/**/egox`, `egox`, `/egox`, ...: node_key_matches; nested keys joined with dots), in file order, then the
    `name:=value` overrides (values parsed as YAML, as ROS does)."""
    values: dict = {}
    if params_file is not None:
        for key, block in read_params_file(params_file).items():
            if node_key_matches(key, "/" + node_name.lstrip("/")) and isinstance(block, dict):
                _flatten(block.get("ros__parameters") or {}, "", values)
    for item in overrides:
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"parameter override {item!r} is not NAME:=VALUE")
        values[name] = yaml.load(text, Loader=RosYamlLoader)
    return values


def _flatten(block: dict, prefix: str, out: dict) -> None:
    for key, value in block.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        else:
            out[f"{prefix}{key}"] = value


def configs_from_parameters(values: dict, sections: dict[str, type]) -> tuple[dict[str, object], list[str]]:
    """Every section's config from parameter values (load_parameters), checked as the node checks them: a value of
    another type than the default's, or out of its range, raises ValueError naming the parameter; unknown names
    come back as warnings (with the closest valid name), as the node logs them."""
    used = set()

    def value_of(name, default, _field):
        if name not in values:
            return default
        used.add(name)
        return values[name]
    configs = {section: _build(section, cls, value_of) for section, cls in sections.items()}
    declared = {f"{section}.{f.name}" for section, cls in sections.items() for f in dataclasses.fields(cls)}
    warnings = []
    for name in sorted(set(values) - used):
        if name.startswith(ROS_OWN_PARAMETERS):
            continue
        warnings.append(_unknown(name, declared))
    return configs, warnings


def override_type_problem(overrides: list[str], sections: dict[str, type]) -> str | None:
    """The first `NAME:=VALUE` override whose value has another type than the declared parameter's (one line), or
    None. Only types: ranges and combinations are the node's to check with every source of values in hand."""
    fields = {f"{section}.{f.name}": f for section, cls in sections.items() for f in dataclasses.fields(cls)}
    for name, value in load_parameters(None, overrides).items():
        if name in fields:
            try:
                _checked(name, _default(fields[name]), value)
            except ValueError as e:
                return str(e)
    return None


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
