"""Local SGD and DiLoCo: workers train alone for ``H`` steps, then average (the same kind of strategy
as EASGD, :mod:`runtime.averaging.strategy`).

**Local SGD** (model averaging; torch's ``PostLocalSGDOptimizer``): after every ``H`` local steps

    x_i <- m = (1/N) sum_i x_i              (one all-reduce of the parameters)

The inner optimizer's state (momentum, Adam's moments) stays each worker's own. With plain SGD and
``H = 1`` it is synchronous data-parallel SGD: from equal parameters, ``mean_i (x - lr g_i) = x - lr
mean_i g_i``, the all-reduce of gradients, for the same traffic.

**DiLoCo** (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models",
2023): every worker starts a round from the same ``x_start``, takes ``H`` inner steps, and then all
workers take one outer step on the averaged delta, an outer SGD with Nesterov momentum:

    delta = x_start - (1/N) sum_i x_i        (the outer gradient; one all-reduce)
    b     <- mu b + delta                    (b = 0 before the first round)
    x_start <- x_start - lr_out (delta + mu b)

and every worker starts the next round from the new ``x_start``. The paper's outer settings are the
defaults: ``lr_out = 0.7``, ``mu = 0.9``; its ``H = 500`` inner steps (AdamW) too. The outer step is
``torch.optim.SGD(nesterov=True)`` on ``x_start``, whose state travels in checkpoints. With ``lr_out =
1`` and ``mu = 0`` DiLoCo is local SGD.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.averaging.strategy import Strategy

DEFAULT_H = 10
DILOCO_H = 500
DILOCO_OUTER_LR = 0.7
DILOCO_OUTER_MOMENTUM = 0.9


class LocalSGD(Strategy):
    """Local SGD (module docstring): the workers' parameters averaged every ``period`` local steps.

    Args:
        model, optimizer: the worker's model and its local optimizer.
        period: local steps between averagings, ``H`` (default 10; 1 with plain SGD: synchronous SGD).
        group: the workers' process group (None: the default group).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, period: int = DEFAULT_H, group: Any = None) -> None:
        super().__init__(model, optimizer, period, group)
        self.broadcast_from_first()

    def exchange(self) -> None:
        self.set_flat(self.allreduce_mean(self.flat()))


class DiLoCo(Strategy):
    """DiLoCo (module docstring): ``period`` inner steps, then the outer Nesterov step on the averaged delta.

    Args:
        model, optimizer: the worker's model and its inner optimizer.
        period: inner steps per round, ``H`` (default 500, the paper's).
        outer_lr, outer_momentum: the outer SGD's rate and Nesterov momentum (default 0.7 and 0.9).
        group: the workers' process group (None: the default group).

    Attributes:
        start: ``x_start``, the parameters every worker started the current round from (flat).
        outer: the outer optimizer over ``start``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        period: int = DILOCO_H,
        outer_lr: float = DILOCO_OUTER_LR,
        outer_momentum: float = DILOCO_OUTER_MOMENTUM,
        group: Any = None,
    ) -> None:
        super().__init__(model, optimizer, period, group)
        self.broadcast_from_first()
        self.start = self.flat()
        self.outer = torch.optim.SGD([self.start], lr=outer_lr, momentum=outer_momentum, nesterov=outer_momentum > 0)

    def exchange(self) -> None:
        mean = self.allreduce_mean(self.flat())
        self.start.grad = self.start - mean
        self.outer.step()
        self.start.grad = None
        self.set_flat(self.start)

    def extra_state(self) -> dict[str, Any]:
        return {"start": self.start, "outer": self.outer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.start.copy_(state["start"])
        self.outer.load_state_dict(state["outer"])
