"""Throughput (pipeline) partitioning: split a graph into stages so that the slowest stage is fastest.

Entry point: :func:`solve_throughput` (``Problem -> Plan``). The algorithms are pure functions over a
:class:`ThroughputInstance` (node loads per device class, memory, transfer costs, device counts and
capacities, colocation), so they are testable without a cluster:

- :func:`contiguous_dp`: the exact contiguous split, DP over ideals (Tarnawski et al., NeurIPS 2020),
  with PipeDream's replicated stages (Narayanan et al., SOSP 2019);
- :func:`noncontiguous_ilp`: the CP-SAT model for any split (or contiguous ones, to cross-check);
- :func:`replicate`: the best replica counts for a fixed split;
- :func:`choose_microbatches`: the microbatch count by simulation (GPipe, Huang et al., NeurIPS 2019);
- :func:`equal_split`: the naive baseline; :func:`brute_force`: exhaustive search for small instances;
- :func:`load_lower_bound`: a bound on the max-load of any split.

The objective, in math, is in :mod:`placement.pipeline.instance`. Nothing here imports torch.
"""

from placement.pipeline.baselines import equal_split
from placement.pipeline.bound import load_lower_bound
from placement.pipeline.build import instance_from_problem, stages_of
from placement.pipeline.dp import DPTimeout, contiguous_dp
from placement.pipeline.exhaustive import brute_force
from placement.pipeline.ideals import TooManyIdeals, enumerate_ideals, structure_blocks
from placement.pipeline.ilp import noncontiguous_ilp
from placement.pipeline.instance import (
    DeviceClass,
    Part,
    Partition,
    ThroughputInstance,
    check_partition,
    is_contiguous,
    max_load,
    part_load,
    pipeline_edges,
)
from placement.pipeline.microbatches import (
    MicrobatchChoice,
    bubble_fraction,
    choose_microbatches,
)
from placement.pipeline.replication import replicate
from placement.pipeline.solve import METHODS, choose_partition, solve_throughput

__all__ = [
    "METHODS",
    "DPTimeout",
    "DeviceClass",
    "MicrobatchChoice",
    "Part",
    "Partition",
    "ThroughputInstance",
    "TooManyIdeals",
    "brute_force",
    "bubble_fraction",
    "check_partition",
    "choose_microbatches",
    "choose_partition",
    "contiguous_dp",
    "enumerate_ideals",
    "equal_split",
    "instance_from_problem",
    "is_contiguous",
    "load_lower_bound",
    "max_load",
    "noncontiguous_ilp",
    "part_load",
    "pipeline_edges",
    "replicate",
    "solve_throughput",
    "stages_of",
    "structure_blocks",
]
