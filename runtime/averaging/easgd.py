"""Synchronous Elastic Averaging SGD (EASGD) and EAMSGD over all-reduce (Zhang, Choromanska, LeCun,
"Deep learning with Elastic Averaging SGD", NeurIPS 2015).

``N`` workers ``x_1 .. x_N`` train on their own; a center variable ``x~`` ties them together with an
elastic force. After every ``tau`` local steps all workers exchange, using the values before the
exchange on both sides (the paper's synchronous equations, with the elastic step taken every tau steps):

    x_i <- x_i - alpha (x_i - x~)                        (each worker is pulled toward the center)
    x~  <- x~  + alpha sum_i (x_i - x~) = x~ + beta (m - x~),    m = (1/N) sum_i x_i,  beta = N alpha

(the symmetric form: the force on the center is the sum of the forces on the workers, so an exchange
conserves ``sum_i x_i + x~``). ``m`` comes from one all-reduce, so the center lives on every worker,
computed identically; each exchange moves ``2 (N - 1) / N`` parameter vectors per worker (a ring).

Defaults, as in the paper's experiments: ``beta = 0.9``, ``alpha = beta / N``; ``tau = 10`` (the
talk's set-up). What an exchange does to the spread: each worker's distance from the workers' mean
shrinks by ``(1 - alpha)``, and the gap between that mean and the center by ``(1 - alpha - beta) =
(1 - (N + 1) alpha)``, so the exchange is stable for ``0 < alpha <= 1`` and ``(N + 1) alpha < 2``.
Two settings reduce it to plain averaging: ``beta = 1`` (``alpha = 1 / N``) makes the new center the
workers' mean ``m``; ``alpha = 1 / (N + 1)`` makes the new center and the workers' new mean both the
average of the ``N + 1`` variables (the workers and the old center).

EAMSGD is EASGD whose workers take Nesterov momentum steps (the paper's momentum ``delta``, 0.99 in its
ImageNet runs). :class:`EAMSGD` builds that optimizer, ``torch.optim.SGD(nesterov=True)`` (Sutskever's
form of Nesterov's update, equivalent to the paper's ``v <- delta v - eta g(x + delta v); x <- x + v``),
with ``delta = 0.9`` by default: 0.99 assumes the paper's long ImageNet runs, 0.9 suits a few hundred
steps on small data.
"""

from __future__ import annotations

from typing import Any

import torch

from graphc.ir.errors import ConfigurationError
from runtime.averaging.strategy import Strategy, check_period

DEFAULT_TAU = 10
DEFAULT_BETA = 0.9
DEFAULT_MOMENTUM = 0.9


def elastic_rates(workers: int, alpha: float | None, beta: float | None) -> tuple[float, float]:
    """``(alpha, beta)`` with ``beta = N alpha``: from whichever is given (``beta`` = 0.9 when neither);
    refuses both given inconsistently and rates outside the stable range (module docstring)."""
    if alpha is not None and beta is not None and abs(beta - workers * alpha) > 1e-12 * max(1.0, abs(beta)):
        raise ConfigurationError(f"alpha={alpha!r} and beta={beta!r}: EASGD's symmetric form needs beta = N alpha (N = {workers}); give one of them")
    if alpha is None:
        alpha = (DEFAULT_BETA if beta is None else beta) / workers
    if not 0 < alpha <= 1 or not (workers + 1) * alpha < 2:
        raise ConfigurationError(
            f"alpha={alpha!r} with N={workers} workers: the elastic exchange is stable for 0 < alpha <= 1 and "
            f"(N + 1) alpha < 2; the paper uses beta = N alpha = 0.9"
        )
    return alpha, workers * alpha


def elastic_exchange(worker: torch.Tensor, center: torch.Tensor, mean: torch.Tensor, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One synchronous exchange: ``(x_i - alpha (x_i - x~), x~ + beta (m - x~))`` from the values before it."""
    return worker - alpha * (worker - center), center + beta * (mean - center)


class EASGD(Strategy):
    """Synchronous EASGD (module docstring): every ``tau`` local steps, an all-reduce and the elastic step.

    Args:
        model, optimizer: the worker's model and its local optimizer.
        tau: local steps between exchanges (default 10).
        alpha, beta: the moving rates, ``beta = N alpha``; give at most one (default ``beta = 0.9``).
        group: the workers' process group (None: the default group).

    Attributes:
        center: the center variable ``x~`` as a flat vector, equal on every worker.
        alpha, beta: the rates in use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        tau: int = DEFAULT_TAU,
        alpha: float | None = None,
        beta: float | None = None,
        group: Any = None,
    ) -> None:
        super().__init__(model, optimizer, check_period("tau", tau), group)
        self.alpha, self.beta = elastic_rates(self.workers, alpha, beta)
        self.broadcast_from_first()
        self.center = self.flat()

    def exchange(self) -> None:
        worker = self.flat()
        mean = self.allreduce_mean(worker.clone())
        worker, self.center = elastic_exchange(worker, self.center, mean, self.alpha, self.beta)
        self.set_flat(worker)

    def extra_state(self) -> dict[str, Any]:
        return {"center": self.center, "alpha": self.alpha, "beta": self.beta}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.center = state["center"].clone()
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])


class EAMSGD(EASGD):
    """EASGD whose workers take Nesterov momentum steps (module docstring); builds that optimizer.

    Args:
        model: the worker's model.
        lr: the workers' learning rate.
        momentum: the Nesterov momentum ``delta`` (default 0.9).
        tau, alpha, beta, group: as :class:`EASGD`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lr: float,
        momentum: float = DEFAULT_MOMENTUM,
        tau: int = DEFAULT_TAU,
        alpha: float | None = None,
        beta: float | None = None,
        group: Any = None,
    ) -> None:
        if not 0 < momentum < 1:
            raise ConfigurationError(f"momentum={momentum!r}: EAMSGD's Nesterov momentum must lie in (0, 1)")
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True)
        super().__init__(model, optimizer, tau=tau, alpha=alpha, beta=beta, group=group)
