"""Parameter servers: the parameters a server holds, and those its workers leave to it.

Under :class:`placement.sync.ParameterServerSync` a replicated stage's buckets are sharded over server
devices, each a CPU process of its own that runs no program. A server holds a copy of the parameters
of the buckets reduced onto it (every rank builds the model the same way, so the copies start equal to
the workers') and its own optimizer over them, from the executor's optimizer factory. In a step, for
each parameter ``p`` of a bucket on the server, with replicas ``r = 1..R`` of its stage:

* ``RD``: the server's gradient becomes ``g_p = sum_r g_p^(r)``. A replica's gradient is that of its
  microbatches' losses, each scaled by ``1/m`` (:mod:`runtime.step`), so ``g_p`` is the full batch's
  gradient, eager's; a replica without a gradient for ``p`` contributes zeros, the server none;
* ``OPT``: the server's optimizer updates its copy from ``g``, exactly as eager's optimizer would;
* ``BC``: every replica's ``p`` becomes the server's copy.

The workers' own optimizers skip the parameters a server holds (:func:`served_parameters`), so the
weights stay equal everywhere. Used by both executors; the collectives themselves are theirs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from runtime.partition import PartitionedProgram
from runtime.schedule import REDUCE, Work


def served_parameters(work: Iterable[Work]) -> set[str]:
    """The names of the parameters whose weights come from a server: those of the device's reduces."""
    return {name for w in work if w.kind == REDUCE for name in w.params}


def server_copies(program: PartitionedProgram, server: str, work: Iterable[Work]) -> dict[str, nn.Parameter]:
    """Name -> the server's own copy (on the CPU) of each parameter its reduces carry, taken from the
    stage device that holds it; ``program`` must still hold every device's part (not :meth:`only`)."""
    copies: dict[str, nn.Parameter] = {}
    for w in work:
        if w.kind != REDUCE or w.action is None:
            continue
        stage = program.stage_device(next(d for d in w.action.group if d != server))
        held = program.programs[stage].parameters
        for name in w.params:
            copies[name] = nn.Parameter(held[name].detach().to("cpu", copy=True), requires_grad=held[name].requires_grad)
    return copies


def worker_parameters(parameters: dict[str, nn.Parameter], work: Iterable[Work]) -> list[nn.Parameter]:
    """The parameters a device's own optimizer updates: all of ``parameters`` but those a server holds."""
    served = served_parameters(work)
    return [p for name, p in parameters.items() if name not in served]


@torch.no_grad()
def zero_filled(parameters: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    """Each parameter's gradient, zeros where it has none (what a replica contributes to a reduce)."""
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
