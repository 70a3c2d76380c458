"""``graphc.compile(..., sync="easgd")``: a data-parallel plan whose replicas train with an averaging
strategy of :mod:`runtime.averaging` (EASGD, EAMSGD, local SGD, DiLoCo), in the user's own loop.

The script runs on ``N`` ranks (``torchrun --nproc-per-node N train.py``); each rank is one worker, the
plan's replica ``r`` of the whole model, and every rank runs the same loop::

    compiled = graphc.compile(loss_fn, objective="throughput", parallel="data", sync="easgd")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = compiled.optimizer(opt, model)   # the strategy of the plan's sync, around opt
    for x, y in batches:                        # the same global batch on every rank
        opt.zero_grad()
        compiled(model, x, y).backward()        # this rank's replica on its share of the batch
        strategy.step()                         # instead of opt.step(): local step, exchange every tau
    strategy.finish()

Semantics (the choices, and why):

* **the call takes the global batch** of ``B`` samples, as a one-process ``graphc.compile`` and
  ``graphc run --sync`` do, and rank ``r`` runs its replica on rows ``r B / N .. (r + 1) B / N - 1`` of
  every tensor argument (:func:`runtime.step.split_batch`), so one script means the same batch with
  ``sync="ring"`` in one process and with ``sync="easgd"`` under torchrun; its outputs are that share's.
  :meth:`AveragingWorker.share` gives a rank's rows of another tensor (the targets of a compiled module);
* **the replica runs as eager PyTorch** on the parameters the model holds: it is the whole model on one
  device, so there is nothing to partition, and the strategy exchanges exactly those parameters. Place
  the model and the batch on the rank's device as in any torchrun script;
* **the plan** is traced and searched as for ``parallel="data"`` (on every rank alike), and must
  replicate the model over exactly ``N`` devices: replica ``r`` is rank ``r`` (devices in natural order
  of names). Its ``settings["parallel"]["averaging"]`` records the strategy; its ``sync`` and predicted
  step price an all-reduce every step (the averaging strategies' time to accuracy is priced by
  ``graphc plan --convergence``);
* **the strategy** is :func:`graphc.app.averaging_strategy.build_strategy`'s, the one ``graphc run
  --sync`` builds from the same record: ``sync`` is a name (``"easgd"``, ``"eamsgd"``, ``"local-sgd"``,
  ``"diloco"``, with ``graphc run``'s defaults) or a record (``placement.sync.ElasticAveragingSync(tau=4)``,
  ``LocalSGDSync(period=8, outer="nesterov")``). Checkpoints: :func:`runtime.averaging.save_checkpoint`.

Refused, each saying what to do: another ``parallel`` than ``"data"``, another objective than
throughput, asynchronous EASGD (its center lives on server ranks that run no user loop: ``graphc run
--sync async-easgd`` starts them), ``calibrate=True``, and a process without torch.distributed (without
torchrun's environment; under torchrun, compile joins the process group itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from graphc.app.averaging_strategy import (
    STRATEGIES,
    averaging_record,
    build_strategy,
    strategy_name,
)
from graphc.app.run_averaging import averaging_workers
from graphc.ir.errors import ConfigurationError
from placement.plan import Plan
from placement.sync import (
    AveragingSync,
    ElasticAveragingSync,
    LocalSGDSync,
    sync_to_dict,
)
from runtime import init_from_env
from runtime.averaging import Strategy
from runtime.step import split_batch

#: The strategies ``graphc.compile`` runs (async EASGD needs server ranks: ``graphc run``).
COMPILE_STRATEGIES = tuple(s for s in STRATEGIES if s != "async-easgd")


def averaging_sync_of(sync: Any) -> AveragingSync | None:
    """The averaging record ``compile(sync=...)`` names (a strategy's name or a record), else None."""
    if isinstance(sync, (ElasticAveragingSync, LocalSGDSync)):
        return sync
    if isinstance(sync, str) and sync in STRATEGIES:
        return averaging_record(sync)
    return None


def check_averaging_layout(sync: AveragingSync, parallel: str, servers: Any, calibrate: bool) -> None:
    """Refuse what an averaging ``sync`` cannot train with (module docstring), saying what to do."""
    name = strategy_name(sync)
    if name == "async-easgd":
        raise ConfigurationError(
            "compile(sync='async-easgd'): asynchronous EASGD keeps its center on server ranks that run no training "
            "loop, which a compiled script does not start: train it with graphc run --sync async-easgd, or compile "
            f"with one of {', '.join(COMPILE_STRATEGIES)}"
        )
    if parallel != "data":
        raise ConfigurationError(
            f"compile(sync={name!r}) trains one replica of the whole model per rank: pass parallel='data', "
            f"not parallel={parallel!r}"
        )
    if servers is not None:
        raise ConfigurationError(f"compile(servers=...) is for sync='parameter-server', not sync={name!r}: leave servers out")
    if calibrate:
        raise ConfigurationError(
            f"compile(sync={name!r}, calibrate=True): every rank would measure the machine while the others train; "
            "leave calibrate out"
        )


@dataclass
class AveragingWorker:
    """This rank's part of a compiled averaging run (module docstring).

    Attributes:
        sync: the averaging record.
        rank: this rank, the plan's replica ``rank``.
        workers: the number of ranks, ``N``.
        device: the plan's device of this replica (set by :meth:`check_plan`).
        strategy: the strategy :meth:`optimizer` built (None before).
    """

    sync: AveragingSync
    rank: int
    workers: int
    device: str = ""
    strategy: Strategy | None = field(default=None, repr=False)

    @classmethod
    def join(cls, sync: AveragingSync) -> AveragingWorker:
        """This rank's worker; under torchrun's environment (``RANK``, ``WORLD_SIZE``) the process group is
        joined first when the script has not (:func:`runtime.init_from_env`); without it, refused."""
        if not dist.is_initialized() and {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= set(os.environ):
            init_from_env()
        if not dist.is_initialized():
            raise ConfigurationError(
                f"compile(sync={strategy_name(sync)!r}) trains one replica per process, and this process is not "
                "one of several ranks (torch.distributed is not initialised): start the script on N ranks with "
                "torchrun --nproc-per-node N script.py, or compile with sync='ring' to train every replica in this process"
            )
        return cls(sync, dist.get_rank(), dist.get_world_size())

    @property
    def name(self) -> str:
        """The strategy's name (:data:`graphc.app.averaging_strategy.STRATEGIES`)."""
        return strategy_name(self.sync)

    def check_plan(self, plan: Plan) -> None:
        """Refuse a plan that does not replicate the whole model over exactly :attr:`workers` devices;
        record the strategy in ``plan.settings["parallel"]["averaging"]`` and this rank's device."""
        devices = averaging_workers(plan, self.name)
        if len(devices) != self.workers:
            batch = plan.graph.batch_size() if plan.graph is not None else None
            divides = "" if batch is None or batch % self.workers == 0 else (
                f"; the planner only replicates over counts that divide the batch ({batch}), so pass a batch divisible by {self.workers}"
            )
            raise ConfigurationError(
                f"compile(sync={self.name!r}): the plan replicates the model over {len(devices)} devices "
                f"({', '.join(devices)}), but the script runs on {self.workers} ranks, one per replica: start it with "
                f"torchrun --nproc-per-node {len(devices)}, or compile for a cluster of {self.workers} devices "
                f"(cluster=placement.presets.local(workers={self.workers}) for CPU workers){divides}"
            )
        plan.settings.setdefault("parallel", {})["averaging"] = sync_to_dict(self.sync)
        self.device = devices[self.rank]

    def share(self, value: Any) -> Any:
        """This rank's rows of ``value`` (a tensor or a nest of them; other values as they are)."""
        return split_batch(value, self.workers)[self.rank]

    def run(self, fn: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """``fn`` on this rank's share of the call's arguments (module docstring)."""
        args, kwargs = self.share((args, kwargs))
        return fn(*args, **kwargs)

    def optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, outer_lr: float | None) -> Strategy:
        """The strategy of :attr:`sync` around ``model`` and ``optimizer`` (which must hold every parameter
        of ``model``); EAMSGD steps Nesterov SGD at the learning rate of ``optimizer``, a ``torch.optim.SGD``."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, p in model.named_parameters() if id(p) not in held]
        if missing:
            raise ConfigurationError(
                f"the optimizer does not hold {len(missing)} parameter(s) of the model (e.g. {missing[0]!r}), which "
                f"{self.name} exchanges: make it over model.parameters()"
            )
        if self.name == "eamsgd" and not isinstance(optimizer, torch.optim.SGD):
            raise ConfigurationError(
                f"sync='eamsgd': EAMSGD's workers take Nesterov SGD steps at the optimizer's learning rate, so pass a "
                f"torch.optim.SGD, not {type(optimizer).__name__}; or use sync='easgd' with it"
            )
        if outer_lr is not None and self.name != "diloco":
            raise ConfigurationError(f"outer_lr is DiLoCo's outer step's rate, not an option of sync={self.name!r}: leave it out")
        lr = float(optimizer.param_groups[0]["lr"])
        self.strategy = build_strategy(self.sync, model, lambda _: optimizer, lr=lr, outer_lr=outer_lr)
        return self.strategy
