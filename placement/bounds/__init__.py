"""Lower bounds on a placed training step: the critical path, the work of the device classes, and the
series / fork-join bounds with transfers (:mod:`placement.bounds.core` combines them;
:mod:`placement.bounds.series` and :mod:`placement.bounds.forkjoin` hold the bounds with transfers)."""

from placement.bounds.core import Bound, lower_bound, lowered_bound, work_bound

__all__ = ["Bound", "lower_bound", "lowered_bound", "work_bound"]
