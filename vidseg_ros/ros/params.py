"""Declares the parameters of :mod:`vidseg_ros.config` on a node, with descriptors."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from vidseg_ros.config import PARAMS, NodeConfig, ParamSpec


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.min is not None and spec.max is not None:
        if isinstance(spec.default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max))
            ]
        elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    return desc


def declare_all(node: Node) -> None:
    """Declare every parameter; values from a params file or the command line override the defaults."""
    node.declare_parameters("", [(spec.name, spec.default, descriptor(spec)) for spec in PARAMS])


def read_all(node: Node) -> NodeConfig:
    """Current values, validated (a params file can hold a bad value as well as a live update)."""
    values = {spec.name: node.get_parameter(spec.name).value for spec in PARAMS}
    return NodeConfig.defaults().updated(values)
