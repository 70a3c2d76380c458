"""runtime: run a placed model for real, in one process or one rank per device.

::

    program = graphc.trace(model, inputs)
    plan = ...                                              # a placement.Plan for program.graph
    parts = runtime.partition(program, plan)                # one fx program per device, comm ops inserted
    print(parts)                                            # what every device will run
    ex = runtime.LocalExecutor(parts, loss_fn=loss, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    result = ex.step(inputs, targets)                       # forward, backward, update

Under torchrun, :class:`DistributedExecutor` runs one device per rank instead: ``graphc run``
(:mod:`graphc.app.run`) starts it, and :func:`runtime.launch.spawn` runs a function on local ranks.
``zoo_loss`` is :func:`graphc.zoo.zoo_loss`, re-exported here for the scripts that import it from here.

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

from graphc.frontend.zoo import zoo_loss
from runtime.check import EagerRun, eager_run, relative_difference
from runtime.distributed import DistributedExecutor, init_from_env
from runtime.errors import MismatchError, ProgramMismatch, RankFailure, RunFailed, RuntimeFault, ScheduleError
from runtime.local import LocalExecutor
from runtime.measure import Measurement, MemoryTracker, measure
from runtime.partition import (
    DeviceProgram,
    PartitionedProgram,
    Transfer,
    fx_devices,
    partition,
    split_by_device,
)
from runtime.plans import contiguous_plan, plan_from_assignment, single_device_plan
from runtime.schedule import (
    Action,
    Schedule,
    gpipe,
    make_schedule,
    one_f_one_b,
    pipeline_stages,
    validate,
)
from runtime.step import StepResult

__all__ = [
    "Action",
    "DeviceProgram",
    "DistributedExecutor",
    "EagerRun",
    "LocalExecutor",
    "Measurement",
    "MismatchError",
    "MemoryTracker",
    "PartitionedProgram",
    "ProgramMismatch",
    "RankFailure",
    "RunFailed",
    "RuntimeFault",
    "Schedule",
    "ScheduleError",
    "StepResult",
    "Transfer",
    "contiguous_plan",
    "eager_run",
    "fx_devices",
    "gpipe",
    "init_from_env",
    "make_schedule",
    "measure",
    "one_f_one_b",
    "partition",
    "pipeline_stages",
    "plan_from_assignment",
    "relative_difference",
    "single_device_plan",
    "split_by_device",
    "validate",
    "zoo_loss",
]
