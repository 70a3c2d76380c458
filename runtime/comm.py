"""Communication ops of partitioned programs, and the communicator that carries them out.

A partitioned device program (:mod:`runtime.partition`) is an ordinary ``torch.fx`` program with three
extra ops, visible where they run:

* ``send(value, to=device, tag=t, grad=g)`` on the producing device, right after the value is made;
* ``recv(src=device, tag=t, shape=..., dtype=..., grad=g)`` at the start of a consuming device's
  program: it posts the receive and returns a handle, so the device does not wait yet;
* ``wait(handle)`` on the consuming device before the first op there that reads the value; it gives
  the tensor, named as the producer's node, so the rest of the program reads as the original.

``tag`` numbers the transfer (one per value and consuming device); ``grad`` says whether, in training,
the gradient of the value flows back over the same edge in the backward pass (decided when the program
is partitioned, so both ends agree without talking).

The ops do nothing by themselves: they call the :class:`Communicator` that an executor makes active
for the duration of a run (:func:`active`). :class:`LocalComm` moves tensors between devices of one
process; :class:`runtime.distributed.DistributedComm` sends them to other ranks.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch

from runtime.errors import RuntimeFault


class Communicator(Protocol):
    """What the communication ops call; one object per microbatch of a running step."""

    def send(self, value: torch.Tensor, to: str, tag: int, grad: bool) -> None:
        """Start sending ``value`` to device ``to``; must not wait for the receiver."""
        ...

    def recv(self, src: str, tag: int, shape: tuple[int, ...], dtype: torch.dtype, grad: bool) -> Any:
        """Post the receive of transfer ``tag`` from ``src``; return a handle for :meth:`wait`."""
        ...

    def wait(self, handle: Any) -> torch.Tensor:
        """Block until the transfer of ``handle`` arrived; return the tensor on this device."""
        ...


_ACTIVE: contextvars.ContextVar[Communicator] = contextvars.ContextVar("graphc_communicator")


@contextlib.contextmanager
def active(communicator: Communicator) -> Iterator[Communicator]:
    """Make ``communicator`` carry out the communication ops run inside the ``with`` block."""
    token = _ACTIVE.set(communicator)
    try:
        yield communicator
    finally:
        _ACTIVE.reset(token)


def _current() -> Communicator:
    try:
        return _ACTIVE.get()
    except LookupError:
        raise RuntimeFault(
            "a communication op of a partitioned program ran outside an executor; run the program with "
            "runtime.LocalExecutor or runtime.DistributedExecutor"
        ) from None


def send(value: torch.Tensor, *, to: str, tag: int, grad: bool) -> None:
    """Send ``value`` to device ``to`` as transfer ``tag`` (non-blocking)."""
    _current().send(value, to, tag, grad)


def recv(*, src: str, tag: int, shape: tuple[int, ...], dtype: torch.dtype, grad: bool) -> Any:
    """Post the receive of transfer ``tag`` from device ``src``; returns a handle for :func:`wait`."""
    return _current().recv(src, tag, tuple(shape), dtype, grad)


def wait(handle: Any) -> torch.Tensor:
    """The tensor of a posted receive, once it arrived."""
    return _current().wait(handle)


#: The ops a partitioned program may contain besides the traced model's own.
COMM_OPS = (send, recv, wait)


class LocalComm:
    """Transfers between devices driven by one process.

    A sent tensor waits in a mailbox keyed by tag (sends come before their waits in the partitioned
    schedule); the wait copies it to the receiving device (``Tensor.to``, or ``clone`` between two
    logical devices on the same torch device, so that each device holds its own copy, as a real
    transfer gives it). The copy is differentiable: autograd carries the gradient back across the cut,
    so no explicit gradient transfer is needed.
    """

    def __init__(self, devices: Mapping[str, torch.device]) -> None:
        self.devices = dict(devices)
        self.mailbox: dict[int, torch.Tensor] = {}

        self.destination: dict[int, torch.device] = {}

    def send(self, value: torch.Tensor, to: str, tag: int, grad: bool) -> None:
        self.mailbox[tag] = value
        self.destination[tag] = self.devices[to]

    def recv(self, src: str, tag: int, shape: tuple[int, ...], dtype: torch.dtype, grad: bool) -> int:
        return tag

    def wait(self, handle: int) -> torch.Tensor:
        value, target = self.mailbox.pop(handle), self.destination.pop(handle)
        return value.to(target) if value.device != target else value.clone()
