"""The errors placement raises, by their old home: the classes are :mod:`graphc.ir.errors`'s (one tree
for graphc, placement and the runtime); this module names the ones placement's users catch."""

from __future__ import annotations

from graphc.ir.errors import (
    ArgumentTypeError,
    ClusterFormatError,
    ConfigurationError,
    DPTimeout,
    InfeasibleError,
    MismatchError,
    PlacementError,
    PlacementNotReusable,
    PlanFormatError,
    ProfileFormatError,
    ScheduleError,
    TooManyIdeals,
    UnknownNameError,
)

__all__ = [
    "ArgumentTypeError",
    "ClusterFormatError",
    "ConfigurationError",
    "DPTimeout",
    "InfeasibleError",
    "MismatchError",
    "PlacementError",
    "PlacementNotReusable",
    "PlanFormatError",
    "ProfileFormatError",
    "ScheduleError",
    "TooManyIdeals",
    "UnknownNameError",
]
