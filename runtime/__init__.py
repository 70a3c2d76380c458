"""runtime: run a placed model for real, in one process or one rank per device.

::

    program = graphc.trace(model, inputs)
    plan = ...                                              # a placement.Plan for program.graph
    parts = runtime.partition(program, plan)                # one fx program per device, comm ops inserted
    print(parts)                                            # what every device will run
    ex = runtime.LocalExecutor(parts, loss_fn=loss, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    result = ex.step(inputs, targets)                       # forward, backward, update

Under torchrun, :class:`DistributedExecutor` runs one device per rank instead: ``graphc run``
(:mod:`graphc.app.run`) starts it, and :func:`spawn` runs a function on local ranks. Both run a plan's
data parallelism as its schedule says (:mod:`placement.sync`): replicated stages all-reduce their
gradients bucket by bucket (ring or hierarchical), the distributed executor launching each bucket from
the backward (:mod:`runtime.collectives`), or push them to parameter servers, ranks of their own that
hold the parameters and their optimizer (:mod:`runtime.servers`).
:mod:`runtime.testing` holds the helpers that check a placed run against eager PyTorch.

Numbers. A placed step computes what eager PyTorch computes on one device, up to float32 rounding of
sums taken in another order, with exceptions that follow from the placement itself:

* random ops (dropout) draw from the generator of the device that runs them, in that device's order.
  The :class:`LocalExecutor` on logical CPU devices draws from the one CPU generator in the traced
  program's order, so with one microbatch and a plan that keeps that order (one without ``order``) it
  draws eager's masks when both start from the same seed (``torch.manual_seed``). Ranks, CUDA devices,
  microbatches or a reordering plan draw other masks than eager, each from the right distribution;
  seeded, a plan's run is reproducible;
* a pipelined step computes batch-norm statistics per microbatch (as GPipe does), and a replicated
  stage keeps each replica's running statistics of its own microbatches.

Models without either give eager's losses, outputs, gradients and, after optimizer steps, parameters.
"""

import graphc.zoo as _zoo
import runtime.errors as _errors
import runtime.measure as _measure
import runtime.partition as _partition
import runtime.testing as _testing
from graphc.ir.deprecation import moved_names
from placement.schedules import Action, Schedule, make_schedule
from runtime.distributed import DistributedExecutor, init_from_env
from runtime.errors import MismatchError, RankFailure, RunFailed, RuntimeFault, ScheduleError
from runtime.launch import spawn
from runtime.local import LocalExecutor
from runtime.measure import Measurement, measure
from runtime.partition import DeviceProgram, PartitionedProgram, partition
from runtime.plans import contiguous_plan, plan_from_assignment, single_device_plan
from runtime.step import StepResult

__all__ = [
    # executors, and what a step returns
    "DistributedExecutor",
    "LocalExecutor",
    "StepResult",
    "init_from_env",
    "spawn",
    # partitioning a traced program by a plan; plans made without a solver
    "DeviceProgram",
    "PartitionedProgram",
    "contiguous_plan",
    "partition",
    "plan_from_assignment",
    "single_device_plan",
    # schedules (placement's: the executors run them)
    "Action",
    "Schedule",
    "make_schedule",
    # measuring a placed step
    "Measurement",
    "measure",
    # errors
    "MismatchError",
    "RankFailure",
    "RunFailed",
    "RuntimeFault",
    "ScheduleError",
]

# Names exported until this release, still reachable from here with a DeprecationWarning: the test
# helpers (now in runtime.testing), internals of the partition and measurement, the old name of
# MismatchError, and the zoo's loss (graphc.zoo.zoo_loss). The runtime's own schedule generators are
# gone: placement.schedules makes the schedules the executors run.
__getattr__ = moved_names(
    "runtime",
    {
        "EagerRun": _testing,
        "eager_run": _testing,
        "relative_difference": _testing,
        "MemoryTracker": _measure,
        "ProgramMismatch": _errors,
        "Transfer": _partition,
        "fx_devices": _partition,
        "split_by_device": _partition,
        "zoo_loss": _zoo,
    },
)
