"""The actions of a schedule: what one device does at one step, as frozen, hashable records.

Every action names the ``device`` that runs it, and prints as a compact code (:meth:`Action.code`):

========================  ==================================================================  ==============
action                    meaning                                                             code
========================  ==================================================================  ==============
:class:`Forward`          the forward of a node (``node``) or of a stage (``stage``) on a     ``F3``,
                          microbatch                                                          ``F(conv1)3``
:class:`Backward`         its backward                                                        ``B3``
:class:`Send`             send the named tensor (the output of node ``tensor``, or its        ``S(a->gpu1)3``,
                          gradient when ``gradient``) of a microbatch to ``peer``             ``S(a'->gpu0)3``
:class:`Recv`             receive it from ``peer``                                            ``R(a<-gpu0)3``
:class:`AllReduce`        sum a replicated stage's parameter gradients (of one bucket) over   ``AR``, ``AR2``
                          ``group``
:class:`Reduce`           sum gradients (of one bucket) over ``group`` onto its ``root``      ``RD2``
                          (a parameter server)
:class:`Broadcast`        send the ``root``'s fresh weights (of one bucket) to ``group``      ``BC2``
:class:`OptimizerStep`    update the device's parameters from their gradients                 ``OPT``
========================  ==================================================================  ==============

A send and a receive match when they carry the same :attr:`Transfer.key`: source device, destination
device, tensor, microbatch and direction (activation or gradient). A collective's members match when
they carry the same :attr:`Collective.key`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from placement.errors import ConfigurationError


@dataclass(frozen=True)
class Action(ABC):
    """One step of one device's list of actions."""

    device: str

    @abstractmethod
    def code(self) -> str:
        """The compact code a schedule table prints for this action."""


@dataclass(frozen=True)
class Compute(Action):
    """The forward or backward of one unit of work for one microbatch: a node of the graph (latency
    plans, ``node`` set) or a pipeline stage (``stage`` set); exactly one of the two is given."""

    PREFIX: ClassVar[str]
    microbatch: int
    node: str | None = None
    stage: int | None = None

    def __post_init__(self) -> None:
        if (self.node is None) == (self.stage is None):
            raise ConfigurationError(
                f"{type(self).__name__} needs exactly one of node and stage, got {self.node!r}, {self.stage!r}"
            )

    def code(self) -> str:
        unit = "" if self.node is None else f"({self.node})"
        return f"{self.PREFIX}{unit}{self.microbatch}"


@dataclass(frozen=True)
class Forward(Compute):
    """Run the forward of the node or stage on the microbatch."""

    PREFIX: ClassVar[str] = "F"


@dataclass(frozen=True)
class Backward(Compute):
    """Run the backward of the node or stage on the microbatch (its forward ran earlier on this device)."""

    PREFIX: ClassVar[str] = "B"


@dataclass(frozen=True)
class Transfer(Action):
    """One end of a point-to-point message: the output of node ``tensor`` for ``microbatch``, or its
    gradient (``gradient``), between ``device`` and ``peer``."""

    peer: str
    tensor: str
    microbatch: int
    gradient: bool = False

    @property
    @abstractmethod
    def key(self) -> tuple[str, str, str, int, bool]:
        """``(source, destination, tensor, microbatch, gradient)``: equal on a send and its receive."""

    def _label(self) -> str:
        return self.tensor + ("'" if self.gradient else "")


@dataclass(frozen=True)
class Send(Transfer):
    """Send the tensor to ``peer``; it does not wait for the receive (the message is buffered)."""

    @property
    def key(self) -> tuple[str, str, str, int, bool]:
        return (self.device, self.peer, self.tensor, self.microbatch, self.gradient)

    def code(self) -> str:
        return f"S({self._label()}->{self.peer}){self.microbatch}"


@dataclass(frozen=True)
class Recv(Transfer):
    """Receive the tensor from ``peer``; waits until ``peer`` has sent it."""

    @property
    def key(self) -> tuple[str, str, str, int, bool]:
        return (self.peer, self.device, self.tensor, self.microbatch, self.gradient)

    def code(self) -> str:
        return f"R({self._label()}<-{self.peer}){self.microbatch}"


@dataclass(frozen=True)
class Collective(Action):
    """An operation that every device of ``group`` runs together (each waits until all have reached
    it); ``name`` says what it combines, e.g. ``"stage 0 gradients"``."""

    group: tuple[str, ...]
    name: str

    @property
    def key(self) -> tuple[str, tuple[str, ...], str]:
        """``(kind, group, name)``: equal on every member's copy of one collective."""
        return (type(self).__name__, self.group, self.name)


@dataclass(frozen=True)
class BucketCollective(Collective):
    """A collective over the parameters of one bucket (:func:`placement.sync.gradient_buckets`):
    ``nodes`` names the nodes whose parameters it carries (empty: every parameter of the device's
    stage), ``bucket`` its index (printed in the code when the stage has several)."""

    nodes: tuple[str, ...] = ()
    bucket: int | None = None

    def _suffix(self) -> str:
        return "" if self.bucket is None else str(self.bucket)


@dataclass(frozen=True)
class AllReduce(BucketCollective):
    """Sum ``name`` (a replicated stage's parameter gradients, or one bucket of them) over the group's
    devices. ``algorithm`` is ``"ring"`` or ``"hierarchical"`` (:mod:`placement.sync`); a hierarchical
    one reduces inside each of ``islands`` (groups of the members, leader first), all-reduces among the
    leaders and broadcasts back."""

    algorithm: str = "ring"
    islands: tuple[tuple[str, ...], ...] = ()

    def code(self) -> str:
        return "AR" + self._suffix()


@dataclass(frozen=True)
class Reduce(BucketCollective):
    """Sum ``name`` (one bucket's gradients) over the group onto ``root`` (a parameter server, which
    contributes nothing of its own)."""

    root: str = ""

    def code(self) -> str:
        return "RD" + self._suffix()


@dataclass(frozen=True)
class Broadcast(BucketCollective):
    """Copy ``root``'s ``name`` (one bucket's updated weights, from a parameter server) to every device
    of the group."""

    root: str = ""

    def code(self) -> str:
        return "BC" + self._suffix()


@dataclass(frozen=True)
class OptimizerStep(Action):
    """Apply the optimizer to the device's parameters, after every gradient has reached them."""

    def code(self) -> str:
        return "OPT"
