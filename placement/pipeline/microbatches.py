r"""Choosing the number of microbatches of a pipelined plan (GPipe, Huang et al., NeurIPS 2019).

With :math:`S` stages of time :math:`t` each per step and :math:`m` microbatches, a GPipe step takes
about :math:`(m + S - 1)\, t / m`: the fraction :math:`(S-1)/(m+S-1)` of it is the bubble
(:func:`bubble_fraction`), which more microbatches shrink. More microbatches also cost: fixed latencies
and per-op overheads are paid :math:`m` times, and the peak memory of a stage changes (activations of
every microbatch in flight are kept until their backward). So :func:`choose_microbatches` does not
trust the formula: it simulates the step (:func:`placement.simulate`) for each candidate :math:`m` and
keeps the fastest one whose simulated peak memory fits every device (the smallest :math:`m` on a tie).
Given the plan's stages, each candidate is simulated as the plan will be: its better pipeline schedule
(:func:`placement.problem.predict`, what :func:`~placement.problem.finish_plan` records); without them,
on the simulator's ready queues.
Candidates are the divisors of the graph's batch size (``meta["batch_size"]``) up to a limit, or powers
of two when the batch size is unknown.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from placement.plan import Stage
from placement.problem import Problem, predict
from placement.simulate import simulate


@dataclass
class MicrobatchChoice:
    """The chosen count and what each candidate simulated to (step ms, and whether it fits in memory);
    ``stopped_by_wall_clock``: the deadline left candidates unsimulated (the choice may then differ
    between runs)."""

    microbatches: int
    step_ms: dict[int, float] = field(default_factory=dict)
    fits: dict[int, bool] = field(default_factory=dict)
    stopped_by_wall_clock: bool = False


def bubble_fraction(stages: int, microbatches: int) -> float:
    """GPipe's idle fraction of a step: ``(S - 1) / (m + S - 1)``."""
    return (stages - 1) / (microbatches + stages - 1) if stages > 0 else 0.0


def microbatch_candidates(batch_size: int | None, limit: int = 32) -> list[int]:
    """Divisors of ``batch_size`` up to ``limit``; powers of two up to ``limit`` when it is unknown."""
    if batch_size and batch_size > 0:
        return [m for m in range(1, min(batch_size, limit) + 1) if batch_size % m == 0]
    out, m = [], 1
    while m <= limit:
        out.append(m)
        m *= 2
    return out


def choose_microbatches(
    problem: Problem,
    assignment: Mapping[str, str],
    *,
    candidates: Sequence[int] | None = None,
    deadline: float | None = None,
    replicas: Mapping[str, Sequence[str]] | None = None,
    stages: Sequence[Stage] | None = None,
) -> MicrobatchChoice:
    """Simulate each candidate and keep the fastest that fits (module docstring).

    ``stages``: the plan's pipeline stages; each candidate is then the simulation of the schedule the
    plan will run (:func:`placement.problem.predict`), its replicated stages included. Without them,
    ``replicas`` (:func:`placement.plan.stage_replicas`) gives the replicated stages of a simulation on
    the ready queues. The simulations share the problem's lowering.

    When none fits, the one with the least total overflow is returned (the plan's memory check then
    reports it). Every candidate is simulated unless the wall clock passes ``deadline`` (a
    ``time.perf_counter()`` value: a safety net, not a budget); the rest are then skipped, at least one
    is always simulated, and the choice says so.
    """
    if candidates is None:
        candidates = microbatch_candidates(problem.graph.batch_size())
    choice = MicrobatchChoice(microbatches=candidates[0])
    best_key = None
    capacity = dict(zip(problem.cluster.device_names, problem.resolved.capacity))
    for m in sorted(set(candidates)):
        if choice.step_ms and deadline is not None and time.perf_counter() > deadline:
            choice.stopped_by_wall_clock = True
            break
        if stages is not None:
            result = predict(problem, assignment, stages=stages, microbatches=m).result
        else:
            result = simulate(problem.graph, problem.cluster, assignment, problem.cost_model, mode=problem.mode,
                              microbatches=m, replicas=replicas, lowered=problem.lowered())  # fmt: skip
        over = sum(max(0.0, peak - capacity[d]) for d, peak in result.peak_memory_bytes.items())
        choice.step_ms[m] = result.step_ms
        choice.fits[m] = over <= 0
        key = (over > 0, over, result.step_ms, m)
        if best_key is None or key < best_key:
            best_key, choice.microbatches = key, m
    return choice
