"""The errors the runtime raises, by their old home: the classes are :mod:`graphc.ir.errors`'s (one
tree for graphc, placement and the runtime); this module names the ones the runtime's users catch.

``ProgramMismatch`` is the runtime's old name of :class:`~graphc.ir.errors.MismatchError`, the one
class for a plan or program made for another model (``placement.plan.PlanMismatchError`` is the
other old name of it)."""

from __future__ import annotations

from graphc.ir.errors import MismatchError, RankFailure, RunFailed, RuntimeFault, ScheduleError

ProgramMismatch = MismatchError

__all__ = ["MismatchError", "ProgramMismatch", "RankFailure", "RunFailed", "RuntimeFault", "ScheduleError"]
