"""The distributed executor: one rank per device over ``torch.distributed``, started by torchrun.

Rank ``r`` runs device ``program.devices[r]`` of a :class:`PartitionedProgram` (gloo on CPU, NCCL on
GPU, ``cuda:LOCAL_RANK`` as its torch device); each rank builds the same partition from the same model,
keeps only its own parameters and updates them with its own optimizer. Hosts make no difference: the
ranks of torchrun's multi-node rendezvous talk the same way.

Forward. The device program runs as generated code; its communication ops call :class:`DistributedComm`:
a send is an ``isend`` (it never blocks), a receive is an ``irecv`` posted where the partition put it,
and the wait before the first use blocks until the tensor arrived.

Backward. A value that needs a gradient crosses the cut through an autograd function: ``_SendGrad`` on
the sender, whose backward waits for the gradient from the consumer (its receive is posted when the
microbatch's backward starts), and ``_RecvGrad`` on the receiver, whose backward sends the gradient of
the received tensor back. Each also returns an empty *token*
tensor; a rank's backward starts from its tokens (and the loss, on the output device), so every
gradient transfer runs even where the value's consumers do not lead to the loss. The autograd engine
runs a device's backward nodes latest-created first, i.e. in the reverse of the forward order, so the
backward is the mirror image of the forward and inherits its freedom from deadlock.

A step runs this rank's work of a :class:`placement.schedules.Schedule` (``node-order``, ``gpipe``,
``1f1b`` or one given), in its order: the forwards and backwards of microbatches, the all-reduce, the
optimizer step (:func:`runtime.schedule.device_work`, checked on every rank before the first step). Messages
carry tags (transfer, microbatch, direction), so gloo matches them whatever the order; with NCCL the
schedule is also checked to keep every pair's messages in order.

Replicated stages (:mod:`runtime.partition`). Every replica is a rank; microbatch ``k`` of a stage on
``r`` replicas runs on replica ``k mod r``, and a transfer of microbatch ``k`` goes between the ranks
that hold ``k`` (:meth:`~runtime.partition.PartitionedProgram.runner`). The schedule's all-reduces,
one per gradient bucket after a replica's last backward, sum the stage's parameter gradients over a
process group of its replicas (ring, or hierarchical over islands), so every replica updates its copy
of the parameters with the gradients of the whole batch; they are launched from the last backward as
soon as each bucket's gradients are final, overlapping the rest of it (:mod:`runtime.collectives`).
Parameter servers (:mod:`runtime.servers`) are ranks of their own, after the plan's devices in the
order of names (:attr:`~runtime.partition.PartitionedProgram.ranks`): each holds a copy of its buckets'
parameters and an optimizer over them; the replicas reduce their buckets' gradients onto it (launched
from the backward in the same way) and receive its weights in broadcasts, and their own optimizers skip
those parameters. When the output stage is replicated its
replicas exchange their microbatches' losses and outputs after the step (not timed), so each returns
the whole step's loss and outputs.

Faults. Waits run under the executor's timeout; a dead or hung peer becomes a
:class:`~runtime.errors.RankFailure` naming the culprit rank, its device, the op in which it was lost
and, when known, the step's action the culprit was in (:mod:`runtime.faults`). SIGTERM ends a rank a
moment late, so that it can still raise its RankFailure when the launcher ends every rank at once.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from placement.schedules import Schedule
from runtime.collectives import BucketCollectives, Groups
from runtime.comm import active
from runtime.errors import MismatchError, RuntimeFault
from runtime.faults import FaultMonitor, finish_reports_on_sigterm, store_from_env
from runtime.gather import all_gather_json, all_gather_tensors
from runtime.measure import MemoryTracker
from runtime.partition import PartitionedProgram, Transfer
from runtime.schedule import (
    BACKWARD,
    COLLECTIVES,
    FORWARD,
    GRADIENT_COLLECTIVES,
    OPTIMIZER,
    device_work,
    resolve,
)
from runtime.servers import server_copies, worker_parameters
from runtime.step import (
    LossFn,
    OptimizerFactory,
    StepResult,
    as_tuple,
    check_inputs,
    concat_microbatches,
    microbatch_loss,
    split_batch,
    to_device,
    unflatten_outputs,
)

DEFAULT_TIMEOUT_S = 60.0
_executors = itertools.count()


def init_from_env(backend: str | None = None, timeout_s: float = 300.0) -> None:
    """Join the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); ``backend`` defaults to NCCL with CUDA, gloo without.
    ``timeout_s`` bounds how long ranks wait for each other to start (the executor's own timeout
    governs its steps)."""
    if dist.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


@dataclass
class _Pending:
    """A posted send or receive: its work handle, the tensor it reads or fills (kept alive until it is
    done), and what to say when it fails."""

    work: Any
    tensor: torch.Tensor
    transfer: Transfer
    peer: str
    op: str


class DistributedExecutor:
    """Runs this rank's device of a :class:`PartitionedProgram` (see the module docstring).

    Args:
        program: the partitioned program, built the same way on every rank.
        loss_fn: ``loss_fn(outputs, targets)`` (see :mod:`runtime.step`); used on the output device.
        optimizer: builds the optimizer from this rank's parameters; None leaves gradients in ``.grad``.
        schedule: a :class:`placement.schedules.Schedule` of the plan, or its name (``"node-order"``,
            ``"gpipe"``, ``"1f1b"``; None: ``make_schedule``'s default for the plan); checked here, on
            every rank (:func:`runtime.schedule.device_work`).
        timeout_s: how long a wait for another rank may last before it is declared dead or hung.
        device: this rank's torch device (default ``cuda:LOCAL_RANK`` under NCCL, else the CPU).

    The default process group must be initialized (:func:`init_from_env`), one rank per device of the
    program and per parameter server; the executor makes its own group over all ranks and one per set of
    ranks its collectives use (:class:`runtime.collectives.Groups`), with ``timeout_s`` (a collective:
    construct executors in the same order on every rank).
    """

    def __init__(
        self,
        program: PartitionedProgram,
        *,
        loss_fn: LossFn | None = None,
        optimizer: OptimizerFactory | None = None,
        schedule: Schedule | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        device: str | torch.device | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeFault(
                "the distributed executor needs a process group: launch with torchrun (or `graphc run`) and call "
                "runtime.init_from_env() first"
            )
        self.program, self.loss_fn, self.timeout_s = program, loss_fn, timeout_s
        world = dist.get_world_size()
        ranks = program.ranks
        if world != len(ranks):
            servers = ", parameter servers included" if program.servers else ""
            raise MismatchError(
                f"the plan uses {len(ranks)} devices ({', '.join(ranks)}{servers}), but {world} rank(s) "
                f"were launched: start torchrun with --nproc-per-node {len(ranks)} (over all hosts)"
            )
        self.backend = dist.get_backend()
        dist.barrier()  # ranks arrive together, so the short timeout below never counts a slow start
        self.group = dist.new_group(list(range(world)), timeout=datetime.timedelta(seconds=timeout_s))
        self.rank = dist.get_rank()
        self.device = ranks[self.rank]
        self._rank_of = {d: r for r, d in enumerate(ranks)}
        self.stage = program.stage_device(self.device)
        self.torch_device = torch.device(device) if device is not None else _default_device(self.backend)
        self.part = program.programs.get(self.device)  # None on a parameter server
        if self.part is not None:
            self.part.module.to(self.torch_device)
        self.schedule = resolve(program, schedule)
        assigned = device_work(self.schedule, program, in_order=self.backend == "nccl")
        self.training = assigned.training
        self.work = assigned.work[self.device]
        # every rank makes every group, in one order: the stages' replicas', then the collectives'
        self.groups = Groups(assigned.work, self._rank_of, timeout_s, extra=program.replicas.values())
        self.replica_group: Any = self.groups[program.replicas[self.stage]] if self.stage in program.replicas else None
        self.server_copies = {
            name: nn.Parameter(p.detach().to(self.torch_device), requires_grad=p.requires_grad)
            for name, p in server_copies(program, self.device, self.work).items()
        }
        self.program = program.only(self.device)
        own = list(self.server_copies.values()) if self.part is None else worker_parameters(self.part.parameters, self.work)
        self.optimizer = optimizer(own) if optimizer is not None and own else None
        namespace = f"graphc/executor{next(_executors)}/"
        self.monitor = FaultMonitor(self.rank, ranks, store_from_env(timeout_s), timeout_s, namespace)
        finish_reports_on_sigterm()
        self._pending_sends: dict[tuple[int, int, bool], _Pending] = {}  # (transfer tag, microbatch, gradient)

    # -- parameters ---------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """This rank's parameters, by their name in the traced model (a parameter server's: its copies)."""
        yield from (self.part.parameters if self.part is not None else self.server_copies).items()

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    @property
    def is_output_rank(self) -> bool:
        """This rank computes the loss (of its microbatches, when the output stage is replicated)."""
        return self.stage == self.program.output_device

    # -- steps --------------------------------------------------------------------------------
    def forward(self, inputs: Any = None) -> Any:
        """The model's outputs for ``inputs`` without gradients; returned on the output rank, None elsewhere.
        Every rank calls it (ranks that take no input may pass None)."""
        if self.part is None:
            return None  # a parameter server computes nothing
        feeds = self._feeds(inputs)
        outputs = {}
        with torch.no_grad():
            for k in self.program.microbatches_of(self.device):
                self.monitor.doing(f"forward (no gradients) of microbatch {k}")
                outputs[k] = self._forward(feeds[k], DistributedComm(self, k))
            self._finish_sends()
            self.monitor.done()
        if not self.is_output_rank:
            return None
        return concat_microbatches(list(self._gather_output_stage(outputs).values()))

    def step(self, inputs: Any = None, targets: Any = None, *, measure_memory: bool = False) -> StepResult:
        """One training step on this rank: its work of the schedule, in order (forwards, backwards,
        collectives, optimizer step; module docstring).

        Every rank calls it with the same arguments (ranks without inputs or the loss may pass None).
        Returns the loss and outputs on the output rank, and on every rank the work it ran
        (:attr:`StepResult.order`: each unit as it ends, a collective as it is launched, so the
        all-reduces launched during the last backward come before it). ``measure_memory``
        records this device's peak bytes of live tensors (slower; CUDA reads the allocator's statistics).
        """
        if not self.training:
            raise MismatchError(
                f"the {self.schedule.name} schedule runs forwards only (it was made for an inference plan): step() "
                "trains; call forward(), or pass a training schedule"
            )
        if self.is_output_rank and self.loss_fn is None:
            raise MismatchError("DistributedExecutor.step needs a loss_fn on the output rank; pass loss_fn=")
        feeds = self._feeds(inputs)
        m = self.program.microbatches
        mb_targets = split_batch(to_device(targets, self.torch_device), m) if self.is_output_rank else [None] * m
        for p in self.parameters():
            p.grad = None
        tracker = None
        if measure_memory and self.torch_device.type != "cuda":
            tracker = MemoryTracker({self.device: self._static_bytes()}, default=self.device)
        if self.torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)
        started_ns, start = _clock_pair()
        spans: list[list[Any]] = []  # [work, start_ms, end_ms] of each unit this rank ran
        comms: dict[int, DistributedComm] = {}
        roots: dict[int, list[torch.Tensor]] = {}
        losses: dict[int, torch.Tensor] = {}
        outputs: dict[int, Any] = {}
        ran: list[str] = []  # the work this rank ran, in order: as it ends; a collective as it is launched
        collectives = BucketCollectives(
            self.device, dict(self.named_parameters()), self.groups, self._guarded, self.monitor.waiting, ran.append
        )
        kinds = [w.kind for w in self.work]
        last_backward = max((i for i, kind in enumerate(kinds) if kind == BACKWARD), default=-1)
        armed = [w for w in self.work[last_backward + 1 :] if w.kind in GRADIENT_COLLECTIVES]
        with tracker if tracker is not None else contextlib.nullcontext():
            for i, work in enumerate(self.work):
                k = work.microbatch
                if work.kind in COLLECTIVES:
                    self.monitor.doing(f"{work} ({work.action.name})")
                    collectives.launch(work)
                    continue
                began = time.perf_counter()
                collectives.finish()
                if work.kind == OPTIMIZER:
                    self.monitor.doing("sends and optimizer step")
                    self._finish_sends()
                    if self.optimizer is not None:
                        self.optimizer.step()
                elif work.kind == FORWARD:
                    self.monitor.doing(f"forward of microbatch {k}")
                    comm = comms[k] = DistributedComm(self, k)
                    out = self._forward(feeds[k], comm)
                    roots[k] = comm.tokens
                    if self.is_output_rank:
                        self.monitor.doing(f"loss of microbatch {k}")
                        loss = microbatch_loss(self.loss_fn, out, mb_targets[k], m)
                        roots[k] = [loss, *roots[k]]
                        losses[k] = loss.detach()
                        outputs[k] = tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, out)
                else:
                    self.monitor.doing(f"backward of microbatch {k}")
                    comm = comms.pop(k)
                    comm.post_gradient_receives()
                    tensors = roots.pop(k)
                    with collectives.armed(armed if i == last_backward else []):
                        if tensors:
                            torch.autograd.backward(tensors, [torch.ones_like(t) for t in tensors])
                    self._release_answered(comm)
                ran.append(str(work))
                spans.append([str(work), 1e3 * (began - start), 1e3 * (time.perf_counter() - start)])
            self.monitor.doing("collectives and sends")
            began = time.perf_counter()
            collectives.finish()
            self._finish_sends()  # done at the OPT, but a replica fed by servers runs none
            if self.torch_device.type == "cuda":
                torch.cuda.synchronize(self.torch_device)
            self.monitor.done()
        step_ms = 1e3 * (time.perf_counter() - start)
        spans.append(["sync", 1e3 * (began - start), step_ms])
        peaks = tracker.peaks() if tracker is not None else {}
        if self.torch_device.type == "cuda" and measure_memory:
            peaks = {self.device: torch.cuda.max_memory_allocated(self.torch_device)}
        order, timeline = {self.device: ran}, {self.device: spans}
        if not self.is_output_rank:
            return StepResult(None, None, step_ms, peaks, order, timeline, started_ns)
        gathered = self._gather_output_stage({k: (losses[k], outputs[k]) for k in losses})
        loss = float(sum(loss for loss, _ in gathered.values()))
        outputs_all = concat_microbatches([out for _, out in gathered.values()])
        return StepResult(loss, outputs_all, step_ms, peaks, order, timeline, started_ns)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (JSON: :func:`runtime.gather.all_gather_json`; tuples come back as
        lists), in rank order, on every rank (a collective: all ranks call it)."""
        return all_gather_json(value, self.group)

    def close(self) -> None:
        """Stop the fault monitor (the process group stays; destroy it when the process is done)."""
        self.monitor.close()

    # -- the forward of one microbatch --------------------------------------------------------
    def _feeds(self, inputs: Any) -> list[tuple[torch.Tensor, ...]]:
        m = self.program.microbatches
        if self.part is None or not self.part.inputs:
            return [()] * m
        if inputs is None:
            raise MismatchError(f"rank {self.rank} ({self.device}) takes input(s) {self.part.inputs}: pass them to step()")
        inputs = as_tuple(inputs)
        check_inputs(self.program, inputs)
        by_name = dict(zip(self.program.input_names, inputs))
        chunks = [split_batch(by_name[n].to(self.torch_device), m) for n in self.part.inputs]
        return [tuple(c[k] for c in chunks) for k in range(m)]

    def _forward(self, feeds: tuple[torch.Tensor, ...], comm: DistributedComm) -> Any:
        with active(comm):
            flat = self.part.module(*feeds)
        return unflatten_outputs(self.program, flat) if self.is_output_rank else None

    # -- replicated stages --------------------------------------------------------------------
    def _gather_output_stage(self, results: dict[int, Any]) -> dict[int, Any]:
        """Microbatch -> result of every replica of the output stage, in microbatch order, on each of them
        (``results`` as is when the output stage is not replicated)."""
        if self.replica_group is None:
            return results
        # Every microbatch's result has the structure of the first (one program): its tensors travel,
        # the rest (the pytree's shape, any other leaves) is this replica's.
        mine = sorted(results)
        flat = [tree_flatten(results[k]) for k in mine]
        spec, first_leaves = flat[0][1], flat[0][0]
        tensor_at = [i for i, leaf in enumerate(first_leaves) if isinstance(leaf, torch.Tensor)]
        keys = all_gather_json(mine, self.replica_group)
        tensors = all_gather_tensors([leaves[i] for leaves, _ in flat for i in tensor_at], self.replica_group)
        merged = {}
        for their_keys, theirs in zip(keys, tensors):
            for j, k in enumerate(their_keys):
                leaves = list(first_leaves)
                for n, i in enumerate(tensor_at):
                    leaves[i] = theirs[j * len(tensor_at) + n]
                merged[k] = tree_unflatten(leaves, spec)
        return {k: merged[k] for k in sorted(merged)}

    # -- point to point, under the fault monitor ----------------------------------------------
    def _tag(self, transfer: Transfer, microbatch: int, grad: bool) -> int:
        return (microbatch * len(self.program.transfers) + transfer.tag) * 2 + int(grad)

    def _isend(self, tensor: torch.Tensor, transfer: Transfer, microbatch: int, grad: bool) -> None:
        peer = self.program.runner(transfer.src if grad else transfer.dst, microbatch)
        tensor = tensor.detach().contiguous()
        op = f"send of {_what(transfer, grad)} (microbatch {microbatch}) to {peer}"
        tag = self._tag(transfer, microbatch, grad)
        work = self._guarded(peer, op, lambda: dist.isend(tensor, self._rank_of[peer], group=self.group, tag=tag))
        self._pending_sends[(transfer.tag, microbatch, grad)] = _Pending(work, tensor, transfer, peer, op)

    def _irecv(self, transfer: Transfer, microbatch: int, grad: bool) -> _Pending:
        peer = self.program.runner(transfer.dst if grad else transfer.src, microbatch)
        buffer = torch.empty(transfer.shape, dtype=transfer.dtype, device=self.torch_device)
        op = f"receive of {_what(transfer, grad)} (microbatch {microbatch}) from {peer}"
        tag = self._tag(transfer, microbatch, grad)
        work = self._guarded(peer, op, lambda: dist.irecv(buffer, self._rank_of[peer], group=self.group, tag=tag))
        return _Pending(work, buffer, transfer, peer, op)

    def _wait(self, pending: _Pending) -> None:
        with self.monitor.waiting(self._rank_of[pending.peer], pending.op):
            self._guarded(pending.peer, pending.op, pending.work.wait)

    def _guarded(self, peer: str, op: str, call: Any) -> Any:
        """``call()``; a communication error becomes a RankFailure naming the culprit."""
        try:
            return call()
        except RuntimeError as exc:
            raise self.monitor.failure(self._rank_of[peer], op, exc) from exc

    def _finish_sends(self) -> None:
        pending, self._pending_sends = self._pending_sends, {}
        for send in pending.values():
            self._wait(send)

    def _release_answered(self, comm: DistributedComm) -> None:
        """After a microbatch's backward: finish the sends of the values whose gradients came back (their
        consumers received them, so the waits return at once) and let go of their tensors, which would
        otherwise stay alive until the step ends. Other sends finish before the optimizer step (gloo's
        sends report completion only when waited for)."""
        for transfer in comm.sent_with_gradient:
            self._wait(self._pending_sends.pop((transfer.tag, comm.microbatch, False)))

    def _static_bytes(self) -> int:
        tensors = [*self.parameters(), *(self.part.buffers.values() if self.part is not None else ())]
        if self.optimizer is not None:
            tensors += [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


def _what(transfer: Transfer, grad: bool) -> str:
    return f"the gradient of {transfer.value!r}" if grad else repr(transfer.value)


def _default_device(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class DistributedComm:
    """The communication ops of one microbatch on one rank (see the module docstring)."""

    def __init__(self, executor: DistributedExecutor, microbatch: int) -> None:
        self.executor = executor
        self.microbatch = microbatch
        self.tokens: list[torch.Tensor] = []
        self._anchor: torch.Tensor | None = None
        self.sent_with_gradient: list[Transfer] = []
        self._gradient_receives: dict[int, _Pending] = {}

    def anchor(self) -> torch.Tensor:
        """A leaf that requires grad, so the autograd functions are recorded whatever their inputs."""
        if self._anchor is None:
            self._anchor = torch.empty(0, device=self.executor.torch_device, requires_grad=True)
        return self._anchor

    def send(self, value: torch.Tensor, to: str, tag: int, grad: bool) -> None:
        transfer = self.executor.program.transfer(tag)
        if grad and torch.is_grad_enabled():
            if not value.requires_grad:
                raise RuntimeFault(
                    f"{self.executor.device}: {transfer.value!r} was expected to require grad (its gradient goes back "
                    f"from {to}) but does not; was the model changed after partitioning?"
                )
            self.tokens.append(_SendGrad.apply(value, self.anchor(), self, transfer))
            self.sent_with_gradient.append(transfer)
        else:
            self.executor._isend(value, transfer, self.microbatch, False)

    def recv(self, src: str, tag: int, shape: tuple[int, ...], dtype: torch.dtype, grad: bool) -> _Pending:
        return self.executor._irecv(self.executor.program.transfer(tag), self.microbatch, False)

    def wait(self, handle: _Pending) -> torch.Tensor:
        t = handle.transfer
        self.executor._wait(handle)
        if t.grad and torch.is_grad_enabled():
            value, token = _RecvGrad.apply(self.anchor(), [handle.tensor], self, t)
            self.tokens.append(token)
            return value
        return handle.tensor

    def send_grad(self, grad: torch.Tensor, transfer: Transfer) -> None:
        self.executor._isend(grad, transfer, self.microbatch, True)

    def post_gradient_receives(self) -> None:
        """Post the receives of the gradients of every value sent, before the backward starts (in the
        order they will come), so that a consumer's gradient flows as soon as it is sent."""
        for transfer in reversed(self.sent_with_gradient):
            self._gradient_receives[transfer.tag] = self.executor._irecv(transfer, self.microbatch, True)

    def recv_grad(self, transfer: Transfer) -> torch.Tensor:
        pending = self._gradient_receives.pop(transfer.tag)
        self.executor._wait(pending)
        return pending.tensor


class _SendGrad(torch.autograd.Function):
    """Forward: send the value. Backward: receive its gradient from the consumer."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, anchor: torch.Tensor, comm: DistributedComm, transfer: Transfer) -> torch.Tensor:
        ctx.comm, ctx.transfer = comm, transfer
        comm.executor._isend(value, transfer, comm.microbatch, False)
        return anchor.new_empty(0)

    @staticmethod
    def backward(ctx: Any, token_grad: torch.Tensor) -> tuple:
        return ctx.comm.recv_grad(ctx.transfer), None, None, None


class _RecvGrad(torch.autograd.Function):
    """Forward: hand out the received tensor. Backward: send its gradient back to the producer.

    The tensor comes in a list (``box``), so that autograd takes it for a new output of this function
    rather than for an input passed through."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, box: list, comm: DistributedComm, transfer: Transfer) -> tuple:
        ctx.comm, ctx.transfer = comm, transfer
        return box[0], anchor.new_empty(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, token_grad: torch.Tensor) -> tuple:
        ctx.comm.send_grad(grad, ctx.transfer)
        return None, None, None, None


def _clock_pair(attempts: int = 5, within_s: float = 50e-6) -> tuple[int, float]:
    """The wall clock (``time.time_ns()``) and ``time.perf_counter()`` read together, to line up this
    rank's timeline with the others' (:attr:`runtime.step.StepResult.started_ns`): read again, up to
    ``attempts`` times, when the process was preempted between the two readings."""
    for _ in range(attempts - 1):
        before = time.perf_counter()
        wall = time.time_ns()
        after = time.perf_counter()
        if after - before <= within_s:
            return wall, (before + after) / 2
    return time.time_ns(), time.perf_counter()
