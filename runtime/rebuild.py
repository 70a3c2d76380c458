"""A model partitioned by a plan from scratch: :func:`partition_model`, what every rank does for itself.

Ranks never receive a partitioned program from another process (graphc unpickles nothing): each one
builds the model, traces it and partitions it by the plan, which gives the same partition everywhere
because tracing and partitioning are deterministic. ``graphc run``'s workers and the functions tests and
benchmarks hand to :func:`runtime.launch.spawn` (with a zoo name and ``plan.to_dict()``) do this.
"""

from __future__ import annotations

from torch import nn

from graphc.frontend.tracing import Granularity, trace
from placement.plan import Plan
from runtime.partition import PartitionedProgram, partition
from runtime.step import split_batch


def partition_model(model: nn.Module, example_inputs: tuple, plan: Plan, *, granularity: Granularity, name: str) -> PartitionedProgram:
    """Trace ``model`` on ``example_inputs`` (the full batch) as the plan's graph was traced
    (``granularity``, ``name``) and partition it by ``plan``; a pipelined plan's programs are traced on
    one microbatch, as its executors run them."""
    program = trace(model, example_inputs, granularity=granularity, name=name)
    m = plan.microbatches
    if m == 1:
        return partition(program, plan)
    micro = trace(model, split_batch(example_inputs, m)[0], granularity=granularity, name=name)
    return partition(micro.graph_module, plan, program.graph)
