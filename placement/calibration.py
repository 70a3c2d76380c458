"""Calibration of profiled op times against a measured step (torch-free: the simulator does the work)."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.profiled import ProfiledTimes
from placement.cluster import Cluster, ClusterLike
from placement.cost_model import CostModel
from placement.simulate import simulate


def calibration_factor(
    profiled: ProfiledTimes, graph: Graph, cluster: ClusterLike, measured_ms: float, *, microbatches: int = 1
) -> float:
    """The factor that scales ``profiled`` (:meth:`ProfiledTimes.scaled`) so that the whole ``graph`` on
    ``cluster``'s first device simulates to ``measured_ms``, a step measured on that device: ops timed in
    isolation miss what runs between them in a real step (the loss, the update, the framework)."""
    cluster = Cluster.resolve(cluster)
    alone = {name: cluster.devices[0].name for name in graph.node_names()}
    simulated = simulate(graph, cluster, alone, CostModel(cluster, profiled=profiled), microbatches=microbatches)
    return measured_ms / simulated.step_ms
