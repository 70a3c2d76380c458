"""From an averaging strategy's name or record to the :mod:`runtime.averaging` strategy that trains a
worker: the one builder that ``graphc run --sync`` (:mod:`graphc.app.run_averaging`) and
``graphc.compile(sync=...)`` (:mod:`graphc.app.compile_averaging`) share, so that a name means the same
settings and the same strategy in both.

Names and the record each stands for (:mod:`placement.sync`), with the defaults of the strategies:

* ``easgd``: ``ElasticAveragingSync(tau=10)``, ``alpha = 0.9 / N`` (the paper's ``beta = N alpha = 0.9``);
* ``eamsgd``: the same with Nesterov momentum ``0.9`` on the workers;
* ``async-easgd``: the same, asynchronous, against a center held by server ranks;
* ``local-sgd``: ``LocalSGDSync(period=10, outer="average")``;
* ``diloco``: ``LocalSGDSync(period=500, outer="nesterov")`` (DiLoCo's paper's ``H``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from graphc.ir.errors import ConfigurationError
from placement.sync import AveragingSync, ElasticAveragingSync, LocalSGDSync
from runtime.averaging import (
    EAMSGD,
    EASGD,
    AsyncEASGD,
    AsyncLayout,
    DiLoCo,
    LocalSGD,
    Strategy,
)
from runtime.averaging.easgd import DEFAULT_MOMENTUM, DEFAULT_TAU
from runtime.averaging.local_sgd import (
    DEFAULT_H,
    DILOCO_H,
    DILOCO_OUTER_LR,
    DILOCO_OUTER_MOMENTUM,
)

ELASTIC = ("easgd", "eamsgd", "async-easgd")
LOCAL = ("local-sgd", "diloco")
STRATEGIES = (*ELASTIC, *LOCAL)
#: Makes a worker's local optimizer over the parameters given.
MakeOptimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def averaging_record(
    name: str,
    *,
    tau: int | None = None,
    alpha: float | None = None,
    prefetch: int | None = None,
    period: int | None = None,
) -> AveragingSync:
    """The record of strategy ``name`` (one of :data:`STRATEGIES`) with the settings given and the
    defaults of the others (module docstring); the record checks their values. The caller checks that
    ``name`` takes the settings it passes."""
    if name in LOCAL:
        default = DEFAULT_H if name == "local-sgd" else DILOCO_H
        return LocalSGDSync(period=period or default, outer="average" if name == "local-sgd" else "nesterov")
    return ElasticAveragingSync(
        tau=DEFAULT_TAU if tau is None else tau,
        alpha=alpha,
        momentum=DEFAULT_MOMENTUM if name == "eamsgd" else 0.0,
        asynchronous=name == "async-easgd",
        prefetch=prefetch or 0,
    )


def strategy_name(sync: AveragingSync) -> str:
    """The name of :data:`STRATEGIES` that runs ``sync`` (EAMSGD for any momentum)."""
    if isinstance(sync, LocalSGDSync):
        return "local-sgd" if sync.outer == "average" else "diloco"
    return "async-easgd" if sync.asynchronous else "eamsgd" if sync.momentum else "easgd"


def build_strategy(
    sync: AveragingSync,
    model: torch.nn.Module,
    optimizer: MakeOptimizer,
    *,
    lr: float,
    outer_lr: float | None = None,
    layout: AsyncLayout | None = None,
) -> Strategy:
    """The strategy of ``sync`` around ``model`` and its local optimizer ``optimizer(parameters)``.

    EAMSGD makes its own optimizer (Nesterov SGD at ``lr`` with the record's momentum); DiLoCo's outer
    step has rate ``outer_lr`` (default 0.7) and momentum 0.9; asynchronous EASGD needs the ``layout`` of
    workers and server ranks. torch.distributed must be initialised (the strategies' constructors are
    collectives)."""
    if isinstance(sync, ElasticAveragingSync) and sync.momentum:
        return EAMSGD(model, lr=lr, momentum=sync.momentum, tau=sync.tau, alpha=sync.alpha)
    local = optimizer(model.parameters())
    if isinstance(sync, LocalSGDSync):
        if sync.outer == "average":
            return LocalSGD(model, local, period=sync.period)
        return DiLoCo(
            model,
            local,
            period=sync.period,
            outer_lr=outer_lr or DILOCO_OUTER_LR,
            outer_momentum=DILOCO_OUTER_MOMENTUM,
        )
    if sync.asynchronous:
        if layout is None:
            raise ConfigurationError("asynchronous EASGD needs the layout of its workers and server ranks: pass layout=")
        return AsyncEASGD(model, local, layout, tau=sync.tau, alpha=sync.alpha, prefetch=sync.prefetch)
    return EASGD(model, local, tau=sync.tau, alpha=sync.alpha)
