"""The distributed executor's bucket collectives: launched as soon as their gradients are final, waited
before anything else runs.

A rank's collectives (:mod:`runtime.schedule`: ``AR``, ``RD``, ``BC``, each over one bucket of
parameters, :mod:`runtime.buckets`) move one flat tensor per dtype of the bucket, made by concatenating
its tensors in the bucket's order (the same on every rank, so the flats line up), and copied back after.

Overlap with the backward, as ``DistributedDataParallel`` does. The gradient collectives (all-reduces,
and the reduces onto parameter servers) that follow a rank's last backward are *armed* during it: a
``register_post_accumulate_grad_hook`` on each of their parameters counts the parameters whose gradient
is final, and once a bucket's count is full the bucket is launched (``async_op=True``), but only after
every earlier bucket, so every rank issues the collectives of a group in one order. A bucket with a
parameter that got no gradient in that backward is launched at its own place in the work, after the
backward. :meth:`BucketCollectives.finish` waits for every launched collective, under the executor's
fault monitor (a dead member is named within the timeout), and copies the results back; the executor
calls it before its next computation or optimizer step and at the end of the step.

What a collective does on this rank, with ``g`` a bucket's flat gradients and ``w`` its flat weights:

* ``AR``, ring: ``all_reduce(g)`` over the stage's replicas (the backend's ring or tree), ``g <- sum_r g_r``;
* ``AR``, hierarchical over islands ``I_1..I_n`` with leaders ``l_i``: ``reduce(g, dst=l_i)`` inside each
  island (launched by the hook), then, when finished, ``all_reduce`` among the leaders and
  ``broadcast(g, src=l_i)`` inside each island: ``g <- sum_i sum_{r in I_i} g_r``, the same sum. Only
  the first step overlaps the backward; the other two run, for all the buckets at once, in
  :meth:`BucketCollectives.finish`;
* ``RD`` onto server ``s``: a replica sends ``g`` (zeros for a parameter without a gradient), the server
  contributes zeros and keeps the sum as its copy's gradient (:mod:`runtime.servers`);
* ``BC`` from ``s``: the server sends ``w`` of its copy, a replica copies it into its parameters.

Process groups (:class:`Groups`) are made at construction on every rank in one order: one per distinct
set of ranks that any collective of the schedule uses (a stage's replicas; each island of two or more
and the leaders, for hierarchical ones; a stage's replicas with a server).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from graphc.ir.errors import ConfigurationError
from placement.schedules import AllReduce, BucketCollective
from runtime.schedule import ALLREDUCE, BROADCAST, REDUCE, Work
from runtime.servers import zero_filled

_WHAT = {ALLREDUCE: "all-reduce", REDUCE: "reduce", BROADCAST: "broadcast"}
Guard = Callable[[str, str, Callable[[], Any]], Any]  # (peer device, op, call) -> call(), failures named


class Groups:
    """The process groups of every collective of a schedule, made on every rank in the same order.

    Args:
        work: every device's work (the whole schedule, as every rank validates it).
        rank_of: device -> its rank.
        timeout_s: the groups' timeout.
        extra: more sets of devices to make groups for (the replicas of every stage).
    """

    def __init__(
        self, work: Mapping[str, Sequence[Work]], rank_of: Mapping[str, int], timeout_s: float, extra: Iterable[Sequence[str]] = ()
    ) -> None:
        self.rank_of = rank_of
        wanted = {frozenset(devices) for devices in extra if len(devices) > 1}
        for items in work.values():
            for w in items:
                if w.action is not None:
                    wanted.update(frozenset(g) for g in member_groups(w.action) if len(g) > 1)
        self._groups: dict[frozenset[str], Any] = {}
        timeout = datetime.timedelta(seconds=timeout_s)
        for devices in sorted(wanted, key=lambda g: sorted(rank_of[d] for d in g)):
            self._groups[devices] = dist.new_group(sorted(rank_of[d] for d in devices), timeout=timeout)

    def __getitem__(self, devices: Iterable[str]) -> Any:
        return self._groups[frozenset(devices)]


def member_groups(action: BucketCollective) -> list[tuple[str, ...]]:
    """The sets of devices ``action`` talks over: its group, or a hierarchical all-reduce's islands and
    their leaders."""
    if isinstance(action, AllReduce) and action.algorithm == "hierarchical":
        return [*action.islands, tuple(island[0] for island in action.islands)]
    return [action.group]


@dataclass
class _Launched:
    """A collective in flight on this rank: per dtype its flat tensor and the tensors it came from (or
    goes back to), the work handles to wait for, and the peer to blame when one fails."""

    work: Work
    flats: list[tuple[torch.Tensor, list[torch.Tensor]]]
    peer: str
    handles: list[Any] = field(default_factory=list)


class BucketCollectives:
    """This rank's bucket collectives in one step (module docstring).

    Args:
        device: this rank's device.
        parameters: name -> this rank's parameters (a server's: its copies).
        groups: the process groups.
        guard: runs a communication call, turning a failure into the executor's RankFailure naming the
            peer (``DistributedExecutor._guarded``).
        waiting: marks this rank as waiting on a peer (``FaultMonitor.waiting``).
        record: called with a collective's code as it is launched (the step's recorded order).
    """

    def __init__(
        self,
        device: str,
        parameters: Mapping[str, nn.Parameter],
        groups: Groups,
        guard: Guard,
        waiting: Callable[[int, str], contextlib.AbstractContextManager[None]],
        record: Callable[[str], None],
    ) -> None:
        self.device, self.parameters, self.groups = device, parameters, groups
        self.guard, self.waiting, self.record = guard, waiting, record
        self._launched: dict[Work, _Launched] = {}
        self._order: list[_Launched] = []

    # -- launching ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def armed(self, works: Sequence[Work]) -> Iterator[None]:
        """Launch each of ``works`` (gradient collectives, in order) from the backward run inside the
        block, as soon as its parameters' gradients are final and every earlier one is launched."""
        # By position: a hook runs once per parameter per backward, and hashing a Work hashes its
        # parameter names, which made the bookkeeping quadratic in the parameters.
        pending = [0] * len(works)
        owners: dict[str, list[int]] = {}
        for i, w in enumerate(works):
            for name in w.params:
                if self.parameters[name].requires_grad:
                    owners.setdefault(name, []).append(i)
                    pending[i] += 1
        first_waiting = [0]  # works before it are launched

        def ready(indices: list[int]) -> Callable[[torch.Tensor], None]:
            def hook(_: torch.Tensor) -> None:
                for i in indices:
                    pending[i] -= 1
                while first_waiting[0] < len(works) and pending[first_waiting[0]] <= 0:  # the ready prefix
                    self.launch(works[first_waiting[0]])
                    first_waiting[0] += 1

            return hook

        handles = [self.parameters[name].register_post_accumulate_grad_hook(ready(indices)) for name, indices in owners.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def launch(self, work: Work) -> None:
        """Start ``work``'s collective on this rank, once (a second call does nothing)."""
        if work in self._launched:
            return
        self.record(str(work))
        action = work.action
        params = [self.parameters[n] for n in work.params]
        if isinstance(action, AllReduce):
            launched = self._all_reduce(work, action, [p.grad for p in params if p.grad is not None])
        else:
            launched = self._with_server(work, getattr(action, "root", ""), params)
        self._launched[work] = launched
        self._order.append(launched)

    def _all_reduce(self, work: Work, action: AllReduce, grads: list[torch.Tensor]) -> _Launched:
        """Launch an all-reduce of ``grads``: over the group (ring), or its first step, the reduce onto
        the island's leader (hierarchical)."""
        launched = _Launched(work, _flats(grads), peer=_next(action.group, self.device))
        if not _hierarchical(action):
            group = self.groups[action.group]
            launched.handles = self._each(launched, lambda f: dist.all_reduce(f, group=group, async_op=True))
            return launched
        island = next(i for i in action.islands if self.device in i)
        if len(island) > 1:
            launched.peer = island[0] if island[0] != self.device else island[1]
            leader, group = self.groups.rank_of[island[0]], self.groups[island]
            launched.handles = self._each(launched, lambda f: dist.reduce(f, dst=leader, group=group, async_op=True))
        return launched

    def _with_server(self, work: Work, root: str, params: list[nn.Parameter]) -> _Launched:
        """Launch a reduce onto parameter server ``root`` or a broadcast from it (module docstring)."""
        server = self.device == root
        assert work.action is not None
        peer = _next(work.action.group, self.device) if server else root
        src, group = self.groups.rank_of[root], self.groups[work.action.group]
        if work.kind == REDUCE:
            if server:  # contributes zeros, and keeps the sum as its copies' gradients
                for p in params:
                    p.grad = torch.zeros_like(p)
            launched = _Launched(work, _flats(zero_filled(params)), peer=peer)
            launched.handles = self._each(launched, lambda f: dist.reduce(f, dst=src, group=group, async_op=True))
        else:
            launched = _Launched(work, _flats([p.detach() for p in params]) if server else _empty_flats(params), peer=peer)
            launched.handles = self._each(launched, lambda f: dist.broadcast(f, src=src, group=group, async_op=True))
        return launched

    def _each(self, launched: _Launched, call: Callable[[torch.Tensor], Any]) -> list[Any]:
        """``call`` on each of the flats of ``launched`` (each launching an asynchronous collective)."""
        op = _describe(launched.work, _WHAT[launched.work.kind])
        return [self.guard(launched.peer, op, lambda f=flat: call(f)) for flat, _ in launched.flats]

    # -- finishing ----------------------------------------------------------------------------
    def finish(self) -> None:
        """Wait for every launched collective, in launch order, finish the hierarchical all-reduces
        (:meth:`_across_islands`), and copy the results back."""
        order, self._order = self._order, []
        for launched in order:
            for handle in launched.handles:
                self._wait(launched.peer, _describe(launched.work, _WHAT[launched.work.kind]), handle.wait)
        self._across_islands([launched for launched in order if _hierarchical(launched.work.action)])
        for launched in order:
            work = launched.work
            is_root = self.device == getattr(work.action, "root", "")
            if work.kind == ALLREDUCE or (work.kind == REDUCE and is_root) or (work.kind == BROADCAST and not is_root):
                _copy_back(launched.flats)  # the sums into the gradients (a server's), the server's weights
        self._launched.clear()

    def _across_islands(self, reduced: list[_Launched]) -> None:
        """The rest of the hierarchical all-reduces ``reduced``, their islands' reduces done: the leaders
        all-reduce every bucket, then each island broadcasts every bucket from its leader (each step
        launched for all the buckets before any is waited for, in bucket order on every rank)."""
        across: list[tuple[str, str, Any]] = []  # (peer, op, work handle)
        inside: list[tuple[str, str, Callable[[], Any]]] = []
        for launched in reduced:
            action = launched.work.action
            assert isinstance(action, AllReduce)
            island = next(i for i in action.islands if self.device in i)
            leaders = tuple(i[0] for i in action.islands)
            for flat, _ in launched.flats:
                if self.device == island[0] and len(leaders) > 1:
                    peer, op = _next(leaders, self.device), _describe(launched.work, "all-reduce among the islands' leaders")
                    call = functools.partial(dist.all_reduce, flat, group=self.groups[leaders], async_op=True)
                    across.append((peer, op, self.guard(peer, op, call)))
                if len(island) > 1:
                    op = _describe(launched.work, "broadcast inside the island")
                    src, group = self.groups.rank_of[island[0]], self.groups[island]
                    call = functools.partial(dist.broadcast, flat, src=src, group=group, async_op=True)
                    inside.append((island[0] if island[0] != self.device else island[1], op, call))
        for peer, op, handle in across:
            self._wait(peer, op, handle.wait)
        broadcasts = [(peer, op, self.guard(peer, op, call)) for peer, op, call in inside]
        for peer, op, handle in broadcasts:
            self._wait(peer, op, handle.wait)

    def _wait(self, peer: str, op: str, call: Callable[[], Any]) -> None:
        with self.waiting(self.groups.rank_of[peer], op):
            self.guard(peer, op, call)


def _hierarchical(action: BucketCollective | None) -> bool:
    return isinstance(action, AllReduce) and action.algorithm == "hierarchical"


def _next(members: Sequence[str], device: str) -> str:
    """The member after ``device`` in ``members``, round the ring: the peer blamed when a collective fails."""
    return members[(members.index(device) + 1) % len(members)]


def _describe(work: Work, what: str) -> str:
    action = work.action
    assert action is not None
    return f"{what} of {action.name} ({work}, {len(work.params)} parameter(s), group {', '.join(action.group)})"


def _by_dtype(tensors: Sequence[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups


def _flats(tensors: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """One flat copy per dtype of ``tensors`` (in their order), with the tensors it came from."""
    return [(torch.cat([t.reshape(-1) for t in ts]), ts) for ts in _by_dtype(tensors).values()]


def _empty_flats(params: Sequence[nn.Parameter]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """One flat buffer per dtype of ``params``, to receive them into."""
    return [
        (torch.empty(sum(p.numel() for p in ps), dtype=dtype, device=ps[0].device), list(ps))
        for dtype, ps in _by_dtype(params).items()
    ]


def _split(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into views shaped as ``like``."""
    views, offset = [], 0
    for t in like:
        views.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return views


@torch.no_grad()
def _copy_back(flats: Sequence[tuple[torch.Tensor, list[torch.Tensor]]]) -> None:
    for flat, tensors in flats:
        for t, part in zip(tensors, _split(flat, tensors)):
            t.copy_(part)


def copy_bandwidth(tensors: Sequence[torch.Tensor], repeats: int = 5) -> float:
    """This process's memory bandwidth as a bucket collective meets it, bytes read and written per
    second: ``tensors`` copied into one flat buffer and back, as :class:`BucketCollectives` copies a
    bucket's gradients (the median of ``repeats`` after one warm-up); what the simulator charges a CPU
    device per bucket (:func:`placement.collectives.bucket_copy_ms`)."""
    tensors = [t.detach().clone() for t in tensors]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    if nbytes == 0 or repeats < 1:
        raise ConfigurationError(f"copy_bandwidth: need tensors with bytes and repeats >= 1, got {nbytes} bytes, {repeats}")
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        _copy_back(_flats(tensors))
        times.append(time.perf_counter() - start)
    return 4 * nbytes / statistics.median(times[1:])  # two copies, each reading and writing every byte
