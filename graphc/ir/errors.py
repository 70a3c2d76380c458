"""Every error graphc raises on purpose, in one tree; each message says what was wrong and what to do.

The tree lives in the intermediate representation, the layer every package may import, and is
organised by what went wrong, so that a caller catches a kind rather than a module's class::

    GraphcError
    ├── FormatError            a file is malformed or missing
    │   ├── GraphFormatError, PlanFormatError, ClusterFormatError, ProfileFormatError
    │   └── MissingFileError   (also a FileNotFoundError)
    ├── MismatchError          a plan or program made for another model, shapes or inputs
    ├── ConfigurationError     a bad argument (also a ValueError)
    │   ├── ArgumentTypeError  an argument of the wrong type (also a TypeError)
    │   └── UnknownNameError   a name looked up that does not exist (also a KeyError)
    ├── PlacementError         no placement, or an unusable placement input
    │   ├── InfeasibleError, DPTimeout, TooManyIdeals, PlacementNotReusable
    │   └── ScheduleError      an invalid schedule
    ├── TraceError             a model that cannot be traced
    └── RuntimeFault           running a placed program failed
        ├── RankFailure
        └── RunFailed

:mod:`graphc`, :mod:`placement` and :mod:`runtime` re-export the classes their users catch, and the
modules that defined them before keep their names (:mod:`placement.errors`, :mod:`runtime.errors`,
``placement.plan.PlanMismatchError``, ...). The command line prints any :class:`GraphcError` as one
line and exits with status 2.
"""

from __future__ import annotations


class GraphcError(Exception):
    """Base of every error graphc raises on purpose."""


# -- files ----------------------------------------------------------------------------------------
class FormatError(GraphcError):
    """A file graphc reads is malformed or missing; the message names the file and the field."""


class GraphFormatError(FormatError):
    """A graph file (graphc JSON or an imported benchmark format) is malformed; names file and field."""


class PlanFormatError(FormatError):
    """A plan file is malformed; the message names the file and the field."""


class ClusterFormatError(FormatError):
    """A cluster description (JSON or constructor arguments) is malformed; names the bad field."""


class ProfileFormatError(FormatError):
    """A cache file of profiled op times is malformed; names the file and the field."""


class MissingFileError(FormatError, FileNotFoundError):
    """A file or folder graphc needs does not exist; the message says how to point graphc at it."""


# -- mismatches -----------------------------------------------------------------------------------
class MismatchError(GraphcError):
    """A plan, cost graph, traced program or step input made for another model, shape or batch size
    is used with this one; raised before anything runs, with the reason."""


# -- arguments ------------------------------------------------------------------------------------
class ConfigurationError(GraphcError, ValueError):
    """An argument is invalid (an unknown solver, objective, preset or granularity, a number out of
    range); the message names the argument and the values it accepts."""


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument has the wrong type (a list where a tensor belongs); names it and what is expected."""


class UnknownNameError(ConfigurationError, KeyError):
    """A name looked up (a graph's node or edge, a device kind) does not exist; names the known ones."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its key; this one carries a sentence.
        return Exception.__str__(self)


# -- placement ------------------------------------------------------------------------------------
class PlacementError(GraphcError):
    """No placement can be made or used: an unknown device, an unassigned node, an impossible order."""


class InfeasibleError(PlacementError):
    """The request cannot be met: constraints conflict, or the graph does not fit in memory."""


class DPTimeout(PlacementError):
    """The pipeline's dynamic program used up its work budget or passed its deadline (the pipeline solver
    then falls back)."""


class TooManyIdeals(PlacementError):
    """The graph has more ideals than the limit allows (the exact DP would be too slow)."""

    def __init__(self, found: int, limit: int, why: str = "") -> None:
        super().__init__(why or f"the graph has more than {limit} ideals ({found} found before stopping)")
        self.found = found
        self.limit = limit


class PlacementNotReusable(PlacementError):
    """An earlier plan's placement does not apply to a new graph (compile then searches afresh)."""


class ScheduleError(PlacementError):
    """A schedule cannot be made for a plan, or cannot run: it deadlocks, a send has no receive, a
    microbatch is missing; the message names the devices and actions."""


# -- tracing --------------------------------------------------------------------------------------
class TraceError(GraphcError):
    """A model could not be traced; the message names the model's source line and the reason."""


# -- running --------------------------------------------------------------------------------------
class RuntimeFault(GraphcError):
    """A placed program failed while running: a communication failed or a device could not be used."""


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


class RunFailed(RuntimeFault):
    """A rank of ``graphc run`` or of ``runtime.launch.spawn`` failed; the message names the rank and
    what it was doing, or gives the error it raised.

    Attributes:
        type_name: the qualified class name of the error the rank raised (an error that is not graphc's
            own, which ``spawn`` hands back as this class); else empty.
        detail: that error's message; else empty.
    """

    def __init__(self, message: str, type_name: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.detail = detail
