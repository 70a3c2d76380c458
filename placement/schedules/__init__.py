"""Schedules as data: what every device does in one step, in order, generated from a plan, validated
before anything runs, and printable. Torch-free.

The schedule is the contract between prediction and execution: the simulator times these actions
(:func:`placement.simulate` with ``schedule=``) and the executors run them, in the same order.

Action model (:mod:`placement.schedules.actions`). A :class:`Schedule` maps each device to its list of
actions; each action names its device:

* :class:`Forward` / :class:`Backward` of a node (``node``, latency plans) or of a pipeline stage
  (``stage``) for one microbatch;
* :class:`Send` / :class:`Recv` of the output of a node (``tensor``), or of its gradient, for one
  microbatch, to / from a ``peer`` device; a send and a receive match on (source, destination, tensor,
  microbatch, gradient);
* :class:`AllReduce`, a :class:`Collective` over a ``group`` of devices (the replicas of a stage summing
  its parameter gradients, in buckets: :mod:`placement.sync`), and, for parameter servers,
  :class:`Reduce` (gradients onto a server) and :class:`Broadcast` (its weights back);
* :class:`OptimizerStep`.

Deadlock check (:mod:`placement.schedules.validate`). Each device runs its list in order. Sends are
buffered: a send never waits. A receive waits until its matching send has run. A collective waits until
every device of its group is at it; then all pass it together. Compute and optimizer steps never wait.
The schedule is run this way until no device can move; a device with actions left is deadlocked, and the
:class:`ScheduleError` names each such device, the action it is stuck at and the devices it waits for,
and the cycle of waits when there is one. Before that, every send must have exactly one receive and
vice versa.

Generators (:mod:`placement.schedules.generate`): :func:`make_schedule` gives ``node-order`` (latency
plans: the plan's node order per device, backwards in reverse), ``gpipe`` and ``1f1b`` (plans with
stages; replicated stages round robin, then, per bucket of gradients, an all-reduce, or under parameter
servers a reduce onto the bucket's server and a broadcast of its weights back), each validated.
"""

from placement.errors import ScheduleError
from placement.schedules.actions import (
    Action,
    AllReduce,
    Backward,
    Broadcast,
    BucketCollective,
    Collective,
    Compute,
    Forward,
    OptimizerStep,
    Recv,
    Reduce,
    Send,
    Transfer,
)
from placement.schedules.generate import SCHEDULES, make_schedule
from placement.schedules.schedule import Schedule
from placement.schedules.validate import validate

__all__ = [
    "Action",
    "AllReduce",
    "Backward",
    "Broadcast",
    "BucketCollective",
    "Collective",
    "Compute",
    "Forward",
    "OptimizerStep",
    "Recv",
    "Reduce",
    "SCHEDULES",
    "Schedule",
    "ScheduleError",
    "Send",
    "Transfer",
    "make_schedule",
    "validate",
]
