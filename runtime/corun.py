"""How much slower the CPU worker processes of this machine compute when several compute at once.

Ranks of one host share its memory bandwidth, its caches and its turbo budget: a step that takes
``t_1`` in one process alone takes ``t_k`` in each of ``k`` processes that run it at the same time
(one intra-op thread each, as the runtime's CPU workers). The cost model prices that as the factor

    s(k) = mean over the k ranks r of  t_k(r) / t_1(r)    (>= 1; a ratio below 1 is noise: 1)

(:attr:`placement.cost_model.CostModel.corun_slowdown`, applied by :mod:`placement.simulate`).
Memory-bound work (large activations, elementwise ops) slows more than compute-bound work, so the
factor is measured per model, on the model's own training step.

:func:`measure_corun` starts ``max(counts)`` ranks with :func:`runtime.launch.spawn`. Each builds the
step with a *factory*: a function given by its importable name (``"module:qualname"``, as spawn takes
functions) and plain arguments, that returns a function running one training step (the application
layer's :func:`graphc.app.calibrate.zoo_training_step` builds a zoo network's). Then, separated by
barriers, every rank in turn times the step alone while the others wait, and for each ``k`` of
``counts`` ranks ``0 .. k - 1`` time it together. A timed run is ``warmup`` steps, ``steps`` counted
steps (their median is the figure), and, when others run too, ``tail`` more steps so that a rank that
finishes its counted steps first keeps loading the machine while its neighbours finish theirs.

``k`` larger than the cores this process may use would measure time slicing, not contention, and is
refused.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from graphc.ir.errors import ConfigurationError, RuntimeFault
from placement.presets import usable_cores
from runtime.distributed import init_from_env
from runtime.launch import resolve_function, spawn

WARMUP = 1
STEPS = 6
TAIL = 1


@dataclass(frozen=True)
class CorunMeasurement:
    """What :func:`measure_corun` measured (module docstring).

    Attributes:
        alone_ms: each rank's median step time alone, ms, by rank.
        together_ms: for each count ``k``, the median step time of each of ranks ``0 .. k - 1`` while all
            ``k`` ran it at once, ms.
    """

    alone_ms: list[float]
    together_ms: dict[int, list[float]]

    @property
    def slowdown(self) -> dict[int, float]:
        """``{k: s(k)}``: the mean over the ``k`` ranks of their time together over their time alone,
        at least 1."""
        return {
            k: max(1.0, statistics.fmean(t / a for t, a in zip(times, self.alone_ms)))
            for k, times in self.together_ms.items()
        }


def corun_rank(factory: str, factory_args: list[Any], counts: list[int], warmup: int, steps: int, tail: int) -> list[Any]:
    """On one rank (started by :func:`measure_corun`): ``[alone_ms, [together_ms per count or None]]``,
    the median of this rank's counted steps alone and, per count ``k``, together with ``k - 1`` others
    (None where this rank is not among the first ``k``)."""
    init_from_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    step = resolve_function(factory)(*factory_args)
    alone = 0.0
    for turn in range(world):
        dist.barrier()
        if rank == turn:
            alone = median_step_ms(step, warmup, steps)
    together: list[float | None] = []
    for k in counts:
        dist.barrier()
        together.append(median_step_ms(step, warmup, steps, tail) if rank < k else None)
    dist.barrier()
    return [alone, together]


def median_step_ms(step: Callable[[], Any], warmup: int, steps: int, tail: int = 0) -> float:
    """The median wall time of ``steps`` calls of ``step`` after ``warmup`` calls, ms; ``tail`` calls follow
    (kept out of the median: a rank that keeps loading the machine while its neighbours finish)."""
    times = []
    for _ in range(warmup + steps + tail):
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times[warmup : warmup + steps])


def measure_corun(
    factory: str,
    factory_args: Sequence[Any] = (),
    counts: Sequence[int] = (2,),
    *,
    warmup: int = WARMUP,
    steps: int = STEPS,
    tail: int = TAIL,
    timeout_s: float = 600.0,
) -> CorunMeasurement:
    """The step that ``factory(*factory_args)`` returns, timed in each of ``counts`` processes at once
    against one alone (module docstring). ``factory`` is a function's importable name; its arguments are
    plain values (:func:`runtime.launch.spawn`).

    Raises :class:`ConfigurationError` for a count below 2 or above the usable cores, fewer than one
    counted step, a negative warm-up or tail, or a factory that cannot be imported; :class:`RuntimeFault`
    when a rank fails (naming it and its error).
    """
    cores = usable_cores()
    wanted = sorted(set(counts))
    if not wanted or any(isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= cores for k in wanted):
        raise ConfigurationError(
            f"measure_corun: counts must be integers from 2 to the {cores} usable cores (more processes than "
            f"cores measure time slicing, not contention); got {list(counts)!r}"
        )
    if not (steps >= 1 and warmup >= 0 and tail >= 0):
        raise ConfigurationError(f"measure_corun: steps must be >= 1, warmup and tail >= 0; got {steps}, {warmup}, {tail}")
    resolve_function(factory)  # refused here, before any rank starts, when it cannot be imported
    outcomes = spawn(corun_rank, max(wanted), (factory, list(factory_args), wanted, warmup, steps, tail), threads=1, timeout_s=timeout_s)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeFault(f"measuring the co-run slowdown: rank {failed[0].rank} failed: {failed[0].error}")
    alone = [float(o.result[0]) for o in outcomes]
    together = {k: [float(o.result[1][i]) for o in outcomes[:k]] for i, k in enumerate(wanted)}
    return CorunMeasurement(alone, together)
