"""Measuring a step: wall time and peak memory per device, next to what the plan predicted.

Memory. CUDA devices report the caching allocator's peak (``torch.cuda.max_memory_allocated``). The
CPU has no such counter, so :class:`MemoryTracker` counts it: a ``TorchDispatchMode`` that sees every op
of the step (forward, the autograd engine's backward, the optimizer) and follows every storage they
allocate until it is freed (views and in-place updates allocate nothing). A device's figure is its
static bytes (parameters, buffers, optimizer state, counted before the step) plus the peak of the live
bytes made during the step: the same quantities the simulator adds up, so the two can be compared. Interception slows every
op down, so memory is measured in a step of its own, never in a timed one.
"""

from __future__ import annotations

import statistics
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode

from graphc.frontend.interpreter import tensors_in
from placement.plan import Plan
from runtime.step import StepResult


class MemoryTracker(TorchDispatchMode):
    """Peak live bytes per device label while active (see the module docstring).

    Args:
        static: device label -> bytes alive before the step and not freed during it.
        label_of: the label of a tensor made before the step (a parameter's owner), or None.
        default: the label of tensors made where nothing else tells (a single-device process).

    Memory is counted by storage: an op's output whose storage is new (none of the op's inputs has it)
    is an allocation, counted from then until the storage is freed (a weak reference to it; tensors,
    views and autograd's saved tensors all keep it alive). An output that shares an input's storage
    (a view, an in-place update such as ``p.add_(1)`` or Adam's ``lerp_``) allocates nothing; one that
    resizes a storage made during the step counts its new size. A new storage is labelled
    :attr:`current` when set (the device whose program is running), else with the label of the first of
    the op's inputs that has one (so backward ops follow the forward tensors they read), else ``default``.
    """

    def __init__(
        self,
        static: dict[str, int],
        label_of: Callable[[torch.Tensor], str | None] | None = None,
        default: str | None = None,
    ) -> None:
        super().__init__()
        self.static = dict(static)
        self.label_of = label_of or (lambda t: None)
        self.default = default
        self.current: str | None = None
        self._live: dict[int, _Allocation] = {}  # id of a storage made during the step -> its allocation
        self._bytes: dict[str, int] = defaultdict(int)
        self._peak: dict[str, int] = defaultdict(int)

    def peaks(self) -> dict[str, int]:
        """Device label -> static bytes + peak bytes made during the step."""
        labels = set(self.static) | set(self._peak)
        return {label: self.static.get(label, 0) + self._peak.get(label, 0) for label in labels}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        given = [t.untyped_storage() for t in _tensors((args, kwargs))]  # held: ids stay theirs during the op
        out = func(*args, **kwargs)
        given_ids = {id(s) for s in given}
        label: str | None = None
        for t in _tensors(out):
            storage = t.untyped_storage()
            allocation = self._live.get(id(storage))
            if allocation is not None:
                self._resize(allocation, storage.nbytes())
            elif id(storage) not in given_ids and storage.nbytes() > 0:
                label = label or self.current or self._input_label(args) or self.default
                if label is not None:
                    self._allocate(storage, label)
        return out

    def _input_label(self, args: tuple) -> str | None:
        for t in _tensors(args):
            allocation = self._live.get(id(t.untyped_storage()))
            label = allocation.label if allocation is not None else self.label_of(t)
            if label is not None:
                return label
        return None

    def _allocate(self, storage: torch.UntypedStorage, label: str) -> None:
        allocation = self._live[id(storage)] = _Allocation(0, label)
        self._resize(allocation, storage.nbytes())
        weakref.finalize(storage, self._release, id(storage))

    def _resize(self, allocation: _Allocation, nbytes: int) -> None:
        self._bytes[allocation.label] += nbytes - allocation.nbytes
        allocation.nbytes = nbytes
        self._peak[allocation.label] = max(self._peak[allocation.label], self._bytes[allocation.label])

    def _release(self, key: int) -> None:
        allocation = self._live.pop(key, None)
        if allocation is not None:
            self._bytes[allocation.label] -= allocation.nbytes


@dataclass
class _Allocation:
    """A storage made during the step: its bytes and the device label it counts on."""

    nbytes: int
    label: str


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors with real storage (not on the meta device) in ``tree``."""
    return [t for t in tensors_in(tree) if t.device.type != "meta"]


# -- a measured run next to its prediction --------------------------------------------------------------


class Executor(Protocol):
    """What :func:`measure` needs of an executor (both executors have it)."""

    def step(self, inputs: Any = None, targets: Any = None, *, measure_memory: bool = False) -> StepResult: ...

    def gather(self, value: Any) -> list[Any]: ...


@dataclass
class Measurement:
    """Measured steps of a placed program, and what the plan predicted.

    Attributes:
        step_ms: median step time (per step, the slowest rank's).
        steps_ms: every timed step's time.
        peak_memory_bytes: device -> peak bytes of live tensors in a step.
        predicted_step_ms: the plan's predicted step time, when known.
        predicted_peak_memory_bytes: device -> the plan's predicted peak memory, when known.
        losses: the loss of every step run, in order (the warmup steps, the timed ones, the one that
            measured memory), as the output rank computed it: what the run trained.
        timeline: device -> ``[work, start_ms, end_ms]`` of each unit it ran in the timed step whose
            time is the median (:attr:`runtime.step.StepResult.timeline`), from the first rank's start
            of that step; empty where the executor records none.
    """

    step_ms: float
    steps_ms: list[float]
    peak_memory_bytes: dict[str, int]
    predicted_step_ms: float | None = None
    predicted_peak_memory_bytes: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    timeline: dict[str, list[list[Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, title: str = "measured vs predicted") -> Table:
        """One row for the step and one per device: measured, predicted, and their ratio."""
        table = Table(title=title)
        for column in ("what", "measured", "predicted", "predicted / measured"):
            table.add_column(column, justify="left" if column == "what" else "right")
        table.add_row("step (ms, median)", f"{self.step_ms:.1f}", *_predicted(self.predicted_step_ms, self.step_ms, "{:.1f}"))
        for device, peak in self.peak_memory_bytes.items():
            predicted = self.predicted_peak_memory_bytes.get(device)
            mib = predicted / 2**20 if predicted is not None else None
            table.add_row(f"peak memory {device} (MiB)", f"{peak / 2**20:.1f}", *_predicted(mib, peak / 2**20, "{:.1f}"))
        return table


def _predicted(value: float | None, measured: float, fmt: str) -> tuple[str, str]:
    if value is None or value <= 0:
        return "-", "-"
    return fmt.format(value), f"{value / measured:.2f}" if measured > 0 else "-"


def measure(
    executor: Executor,
    inputs: Any,
    targets: Any,
    *,
    steps: int = 10,
    warmup: int = 2,
    plan: Plan | None = None,
) -> Measurement:
    """Time ``steps`` training steps after ``warmup`` ones, then measure memory in one more step; next to
    ``plan``'s predictions when it has them, with every step's loss. On a distributed executor every rank calls it and gets the
    same result (the ranks' figures are gathered)."""
    results = [executor.step(inputs, targets) for _ in range(warmup + steps)]
    results.append(executor.step(inputs, targets, measure_memory=True))
    times = [r.step_ms for r in results[warmup:-1]]
    losses = [r.loss for r in results] if results[0].loss is not None else None
    gathered = executor.gather((times, results[-1].peak_memory_bytes, losses))
    per_step = [max(step) for step in zip(*(t for t, _, _ in gathered))]
    median = sorted(range(len(per_step)), key=per_step.__getitem__)[len(per_step) // 2]
    chosen = results[warmup + median]
    timelines = executor.gather((chosen.started_ns, chosen.timeline))
    return Measurement(
        step_ms=statistics.median(per_step),
        steps_ms=per_step,
        peak_memory_bytes={d: b for _, p, _ in gathered for d, b in p.items()},
        predicted_step_ms=plan.predicted_step_ms if plan is not None and plan.predicted_step_ms > 0 else None,
        predicted_peak_memory_bytes=dict(plan.peak_memory_bytes) if plan is not None else {},
        losses=next((ls for _, _, ls in gathered if ls is not None), []),
        timeline=aligned_timeline(timelines),
    )


def aligned_timeline(ranks: list[Any]) -> dict[str, list[list[Any]]]:
    """One timeline from each rank's ``(started_ns, {device: [[work, start_ms, end_ms], ...]})`` of the
    same step: every span shifted to ms from the earliest rank's start."""
    first = min((started for started, _ in ranks), default=0)
    merged: dict[str, list[list[Any]]] = {}
    for started, timeline in ranks:
        shift = (started - first) / 1e6
        for device, spans in timeline.items():
            merged.setdefault(device, []).extend([work, begin + shift, end + shift] for work, begin, end in spans)
    return merged

