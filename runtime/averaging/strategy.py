"""The common base of the averaging strategies: the user's model and optimizer, exchanging every period.

A strategy wraps the user's model and optimizer in an ordinary training loop, in the style of torch's
``PostLocalSGDOptimizer`` and torchft's ``LocalSGD``/``DiLoCo``::

    strategy = EASGD(model, optimizer, tau=10)      # or LocalSGD, DiLoCo, AsyncEASGD, ...
    for x, y in batches:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        strategy.step()      # optimizer.step(); after every period-th local step, the exchange
    strategy.finish()

Each worker takes local optimizer steps on its own data; after its ``k``-th step, ``k`` a multiple of
the period, :meth:`Strategy.exchange` runs. The synchronous strategies' exchange is a collective over
the workers' process group, so every worker calls :meth:`~Strategy.step` the same number of times.

The parameters travel as one flat vector ``x`` (every parameter of the model, in ``model.parameters()``
order, concatenated). The synchronous strategies start from equal parameters: their constructor
broadcasts the first worker's (a collective, as ``DistributedDataParallel``'s constructor does).

Traffic (:class:`Traffic`) counts the payload bytes this rank sends and receives, per exchange, from the
tensors' sizes; the start-up broadcast is not counted (it is the same for every strategy). A ring
all-reduce of ``P`` bytes over ``N`` ranks (reduce-scatter, then all-gather, ``N - 1`` rounds each of
``P / N`` bytes) sends and receives, per rank,

    2 (N - 1) / N * P bytes,

the figure the simulator prices (:mod:`placement.simulate`); point-to-point messages count their tensors.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from graphc.ir.errors import ConfigurationError, MismatchError


@dataclass
class Traffic:
    """What one rank sent and received for its strategy (module docstring).

    Attributes:
        sent: payload bytes sent.
        received: payload bytes received.
        exchanges: exchanges taken part in.
    """

    sent: float = 0.0
    received: float = 0.0
    exchanges: int = 0


def ring_allreduce_bytes(nbytes: float, ranks: int) -> float:
    """Bytes one rank sends (and receives) in a ring all-reduce of ``nbytes`` over ``ranks``: 2 (N-1)/N P."""
    return 2.0 * (ranks - 1) / ranks * nbytes


def flat_parameters(parameters: list[torch.Tensor]) -> torch.Tensor:
    """The parameters concatenated into one new flat vector (detached)."""
    return torch.cat([p.detach().reshape(-1) for p in parameters])


def set_flat_parameters(parameters: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat`` (as :func:`flat_parameters` lays it out) into the parameters, in place, so that the
    optimizer's references and state stay valid."""
    with torch.no_grad():
        offset = 0
        for p in parameters:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def check_period(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1; else a ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}={value!r}: expected an integer >= 1 (local steps between exchanges)")
    return value


class Strategy(abc.ABC):
    """A model and optimizer that exchange with the other workers every ``period`` local steps.

    Args:
        model: the worker's model (its parameters are the ones exchanged).
        optimizer: the worker's (inner) optimizer over the model's parameters.
        period: local steps between exchanges (EASGD's tau, local SGD's H).
        group: the workers' process group (None: the default group).

    Subclasses implement :meth:`exchange` and, for state beyond the model, optimizer and step count,
    :meth:`extra_state` and :meth:`load_extra_state`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, period: int, group: Any = None) -> None:
        if not dist.is_initialized():
            raise ConfigurationError(
                f"{type(self).__name__}: torch.distributed is not initialized; call runtime.distributed.init_from_env() first"
            )
        self.model = model
        self.optimizer = optimizer
        self.period = check_period("period", period)
        self.group = group
        self.parameters = [p for p in model.parameters()]
        if not self.parameters:
            raise ConfigurationError(f"{type(self).__name__}: the model has no parameters to exchange")
        self.steps = 0
        self.traffic = Traffic()

    @property
    def workers(self) -> int:
        """The number of workers in the group."""
        return dist.get_world_size(self.group)

    @property
    def nbytes(self) -> int:
        """The bytes of the flat parameter vector."""
        return sum(p.numel() * p.element_size() for p in self.parameters)

    def flat(self) -> torch.Tensor:
        """This worker's parameters as one new flat vector."""
        return flat_parameters(self.parameters)

    def set_flat(self, flat: torch.Tensor) -> None:
        """Set this worker's parameters from a flat vector."""
        set_flat_parameters(self.parameters, flat)

    def step(self) -> None:
        """One local optimizer step; after every ``period``-th, the exchange."""
        self.optimizer.step()
        self.steps += 1
        self.after_local_step()
        if self.steps % self.period == 0:
            self.exchange()
            self.traffic.exchanges += 1

    def after_local_step(self) -> None:
        """Called after every local step, before a due exchange (async EASGD posts its prefetch here)."""

    @abc.abstractmethod
    def exchange(self) -> None:
        """Exchange with the other workers (and the center); update this worker's parameters."""

    def finish(self) -> None:
        """End the run (async EASGD tells the servers this worker is done); the synchronous ones have nothing to do."""

    # -- collectives ------------------------------------------------------------------------------
    def broadcast_from_first(self) -> None:
        """Make every worker's parameters the first worker's (a collective; not counted as traffic)."""
        flat = self.flat()
        dist.broadcast(flat, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0, group=self.group)
        self.set_flat(flat)

    def allreduce_mean(self, flat: torch.Tensor) -> torch.Tensor:
        """The workers' mean of ``flat`` (all-reduced in place), counted as a ring all-reduce."""
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat /= self.workers
        moved = ring_allreduce_bytes(flat.numel() * flat.element_size(), self.workers)
        self.traffic.sent += moved
        self.traffic.received += moved
        return flat

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values only: loads with ``weights_only=True``)."""
        return {
            "kind": type(self).__name__,
            "steps": self.steps,
            "traffic": asdict(self.traffic),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; refuses the state of another kind of strategy."""
        if state.get("kind") != type(self).__name__:
            raise MismatchError(f"a checkpoint of {state.get('kind')!r} cannot resume a {type(self).__name__}; load it into the same strategy")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.traffic = Traffic(**state["traffic"])
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict[str, Any]:
        """The strategy's own state (a center, an outer optimizer)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""
