"""placement: clusters, the cost model, the lowering of a problem to arrays, the simulator of placed graphs,
and lower bounds.

Nothing in this package imports torch: a plan can be made, simulated and bounded from a cost graph alone.
"""

from graphc.ir.profiled import ProfiledTimes
from placement.bounds import Bound, lower_bound
from placement.cluster import Cluster, ClusterLike, Device, Host, Link, Route, Switch
from placement.constraints import Constraints
from placement.cost_model import CostModel, TimeSource, graph_inputs
from placement.errors import (
    ClusterFormatError,
    ConfigurationError,
    InfeasibleError,
    MismatchError,
    PlacementError,
    PlanFormatError,
    ProfileFormatError,
    ScheduleError,
)
from placement.lowering import Lowered, lower
from placement.plan import Plan
from placement.presets import cluster_presets
from placement.simulate import simulate
from placement.solvers import SOLVERS, solve
from placement.timeline import SimResult, TimelineEvent

__all__ = [
    "Constraints",
    "InfeasibleError",
    "SOLVERS",
    "ScheduleError",
    "solve",
    "Bound",
    "Cluster",
    "ClusterFormatError",
    "ClusterLike",
    "ConfigurationError",
    "CostModel",
    "Device",
    "Host",
    "Link",
    "Lowered",
    "MismatchError",
    "PlacementError",
    "Plan",
    "PlanFormatError",
    "ProfileFormatError",
    "ProfiledTimes",
    "Route",
    "SimResult",
    "Switch",
    "TimeSource",
    "TimelineEvent",
    "cluster_presets",
    "graph_inputs",
    "lower",
    "lower_bound",
    "simulate",
]
