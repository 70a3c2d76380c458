"""The errors the runtime raises on purpose: each names the device or rank, the op, and what to do."""

from __future__ import annotations

from graphc.ir.errors import GraphcError


class RuntimeFault(GraphcError):
    """The runtime cannot run a program: the plan or the inputs do not match the model, a schedule
    would deadlock, or a communication failed."""


class ProgramMismatch(RuntimeFault):
    """A plan, a cost graph, a traced program or the inputs of a step do not belong together; raised
    before anything runs, with the reason."""


class ScheduleError(RuntimeFault):
    """A pipeline schedule is invalid: it deadlocks, a send has no receive, or a microbatch is missing."""


class RankFailure(RuntimeFault):
    """Another rank died or hung while this rank waited for it.

    Attributes:
        rank: the rank that failed (the culprit, as far as this rank can tell).
        device: the plan device that rank runs.
        op: the communication op this rank was blocked in when it noticed.
        activity: what the failed rank was last seen doing (``"forward of microbatch 0"``), when
            it had been at it long enough to say so; else empty.
    """

    def __init__(self, message: str, rank: int, device: str, op: str, activity: str = "") -> None:
        super().__init__(message)
        self.rank = rank
        self.device = device
        self.op = op
        self.activity = activity

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.rank, self.device, self.op, self.activity))


class RunFailed(RuntimeFault):
    """A rank of ``graphc run`` failed; the message names the rank, its device and what it was doing."""
