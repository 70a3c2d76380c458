r"""The local executor: one process drives every device of a partitioned program.

Each plan device maps to a torch device: ``cuda:i`` names itself, other GPU names take the CUDA devices
in order when there are enough, and everything else, like the ``cpuN`` workers of the ``local``
cluster, runs on the CPU as a *logical* device. Each device reads only its own values; a transfer
copies the tensor to the receiving device (a clone between logical devices), so every device holds its
own copy, and each parameter lives on the device that owns it and is updated there.

A training step (:meth:`LocalExecutor.step`) runs a :class:`placement.schedules.Schedule`, the one the
distributed executor and the simulator run: every device does its work of the schedule in the
schedule's order (forward and backward of each microbatch, the all-reduce of a replicated stage, the
optimizer step), the devices taking turns in one process and exchanging tensors and gradients through
a mailbox (:mod:`runtime.play`). A replicated stage (:mod:`runtime.partition`) runs microbatch ``k``
on its replica ``k mod r``, each replica with its own copy of the parameters, and its all-reduces
(one per bucket) sum the replicas' gradients, so the copies stay equal. With parameter servers
(:mod:`runtime.servers`) each server is one more device of the step, holding its copy of its buckets'
parameters and its own optimizer; the replicas reduce their gradients onto it and copy its weights back.

A differentiable call (:meth:`LocalExecutor.__call__`) and :meth:`LocalExecutor.forward` run no
schedule: the device programs run interleaved in the partition's global order
(:attr:`PartitionedProgram.schedule`), node by node, microbatch after microbatch, with differentiable
copies, so that a ``backward`` of anything computed from the outputs carries the gradients across every
cut. A replicated stage runs microbatch ``k`` on its replica ``k mod r`` as in a step, but for the call
every replica's module holds, instead of its own copies, its stage device's parameters moved to the
replica's torch device by ``Tensor.to`` (the same tensors where the replica's torch device is the
owner's, as for logical CPU devices; else a differentiable copy, the broadcast of
``torch.nn.DataParallel``). The caller's ``backward`` then sums, in autograd, every replica's gradient
into the owner's ``.grad``, once:

.. math:: \nabla_\theta L = \sum_{k} \nabla_{\theta_{k \bmod r}} L_k, \qquad \theta_j = \theta \text{ for every replica } j,

the full batch's gradient, as eager's. This is the sum the plan's sync (all-reduce of its buckets, or
the parameter servers' reduce and broadcast) makes in a step and in the distributed executor; the call
makes none of that traffic, which the plan's prediction prices. Replicas keep their own buffers (batch
norm's running statistics), as in a step. Since the caller then updates the stage devices' parameters
alone, the next :meth:`LocalExecutor.step` first copies them into the replicas' and the servers' copies.

On CUDA the kernels of different GPUs overlap because launches are asynchronous; on logical CPU
devices the run is sequential. Either way the numbers are those of eager PyTorch on one device (up to
float32 rounding of ops that run in another order; where data flows back and forth between devices
within a microbatch, a device back-propagates in parts and sums some gradients in another order than
eager's one backward). Random ops draw from their torch device's generator
in the order the devices run them: on logical CPU devices, with one microbatch and the ``node-order``
schedule of a plan that keeps the traced order, the masks of eager dropout.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from placement.schedules import Schedule
from runtime.comm import LocalComm, active
from runtime.errors import MismatchError
from runtime.measure import MemoryTracker
from runtime.partition import PartitionedProgram
from runtime.play import DeviceInterpreter, Play
from runtime.schedule import DeviceWork, device_work, resolve
from runtime.servers import server_copies, worker_parameters
from runtime.step import (
    LossFn,
    OptimizerFactory,
    StepResult,
    as_tuple,
    check_inputs,
    concat_microbatches,
    split_batch,
    to_device,
    unflatten_outputs,
)


def torch_devices(devices: list[str], overrides: Mapping[str, str | torch.device] | None = None) -> dict[str, torch.device]:
    """Plan device -> torch device (see the module docstring); ``overrides`` wins where it names one.
    Without CUDA every device is a logical CPU device."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(devices))
    if unknown:
        raise MismatchError(f"devices= names {unknown}, which the plan does not use (it uses {devices})")
    cuda = torch.cuda.device_count()
    gpus = [d for d in devices if d not in overrides and not d.startswith("cpu")] if cuda else []
    named = {d: int(d.partition(":")[2] or 0) for d in gpus if re.fullmatch(r"cuda(:\d+)?", d)}
    free = [i for i in range(cuda) if i not in named.values()]
    unnamed = [d for d in gpus if d not in named]
    if any(i >= cuda for i in named.values()) or len(unnamed) > len(free):
        raise MismatchError(
            f"the plan uses GPUs {gpus} and this machine has {cuda}: pass devices= to map them, or re-plan for this machine"
        )
    result = {d: torch.device("cpu") for d in devices}
    result.update({d: torch.device(overrides[d]) for d in overrides})
    result.update({d: torch.device("cuda", i) for d, i in named.items()})
    result.update({d: torch.device("cuda", i) for d, i in zip(unnamed, free)})
    return result


class LocalExecutor:
    """Runs a :class:`PartitionedProgram` in this process (see the module docstring).

    Args:
        program: the partitioned program; the executor moves each device's parameters and buffers to
            that device's torch device and trains them in place.
        loss_fn: ``loss_fn(outputs, targets)`` (see :mod:`runtime.step`); needed for :meth:`step`.
        optimizer: builds the optimizer from the parameters, e.g. ``lambda ps: torch.optim.SGD(ps, lr=0.1)``;
            None: :meth:`step` computes gradients and leaves them in ``.grad``. Each device gets its
            own optimizer of its own parameters (as each rank of the distributed executor does),
            stepped at the schedule's optimizer step; a parameter server gets one over its copies, and
            its workers' skip the parameters it holds. Made with the schedule's work (see ``schedule``).
        schedule: what :meth:`step` runs: a :class:`placement.schedules.Schedule` of the plan, or its
            name (``"node-order"``, ``"gpipe"``, ``"1f1b"``), checked here (:func:`runtime.schedule.device_work`);
            None: ``make_schedule``'s default for the plan, made and checked at the first step (a program
            only called differentiably needs none).
        devices: plan device -> torch device, where the default mapping does not suit.
    """

    def __init__(
        self,
        program: PartitionedProgram,
        *,
        loss_fn: LossFn | None = None,
        optimizer: OptimizerFactory | None = None,
        schedule: Schedule | str | None = None,
        devices: Mapping[str, str | torch.device] | None = None,
    ) -> None:
        self.program = program
        self.loss_fn = loss_fn
        self.devices = torch_devices(program.devices, devices)
        for device, part in program.programs.items():
            part.module.to(self.devices[device])
        self._every_copy = [p for part in program.programs.values() for p in part.parameters.values()]
        self._optimizer = optimizer
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.servers: dict[str, dict[str, nn.Parameter]] = {}  # parameter server -> its copies
        self._schedule = schedule
        self._assigned: DeviceWork | None = None
        self._copies_behind = False  # a differentiable call ran: the caller may have updated the owners alone
        if schedule is not None:
            self._assign()

    @property
    def schedule(self) -> Schedule:
        """The schedule :meth:`step` runs."""
        return self._assign().schedule

    def _assign(self) -> DeviceWork:
        """The schedule's work, checked, and the optimizers of the devices and servers, made once."""
        if self._assigned is None:
            assigned = device_work(resolve(self.program, self._schedule), self.program)
            for server in self.program.servers:
                self.servers[server] = server_copies(self.program, server, assigned.work[server])
                self._every_copy += self.servers[server].values()
            if self._optimizer is not None:
                for d, part in self.program.programs.items():
                    own = worker_parameters(part.parameters, assigned.work[d])
                    if own:
                        self.optimizers[d] = self._optimizer(own)
                for server, copies in self.servers.items():
                    if copies:
                        self.optimizers[server] = self._optimizer(list(copies.values()))
            self._assigned = assigned
        return self._assigned

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter once, by its name in the traced model, on the device that owns it (a replicated
        stage's first device: the parameters the differentiable call trains; its replicas' copies equal
        them after a step, and are caught up at the step after a call)."""
        for device in self.program.stage_devices:
            yield from self.program.programs[device].parameters.items()

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def gather(self, value: Any) -> list[Any]:
        """``[value]``: one process holds every device (the distributed executor gathers from its ranks)."""
        return [value]

    def __call__(self, *inputs: Any) -> Any:
        """The model's outputs for ``inputs``, differentiable: a ``backward`` of anything computed from
        them sends gradients back across every cut into the parameters (as ``graphc.compile`` needs), a
        replicated stage's summed over its replicas into its stage device's (module docstring)."""
        check_inputs(self.program, inputs)
        self._copies_behind = bool(self.program.replicas)
        with self._replicas_bound():
            return concat_microbatches([self._forward(mb, k) for k, mb in enumerate(self._split(tuple(inputs)))])

    def forward(self, inputs: Any) -> Any:
        """The model's outputs for ``inputs`` without gradients (inference)."""
        inputs = as_tuple(inputs)
        check_inputs(self.program, inputs)
        with torch.no_grad(), self._replicas_bound():
            return concat_microbatches([self._forward(mb, k) for k, mb in enumerate(self._split(inputs))])

    def step(self, inputs: Any, targets: Any = None, *, measure_memory: bool = False) -> StepResult:
        """One training step: every device's work of the schedule, in the schedule's order (module
        docstring); :attr:`StepResult.order` says what each device ran.

        With ``measure_memory`` the step also records each device's peak bytes of live tensors (slower:
        every op is intercepted; CUDA devices read the allocator's statistics instead).
        """
        if self.loss_fn is None:
            raise MismatchError("LocalExecutor.step needs a loss_fn; pass loss_fn= (or call forward())")
        assigned = self._assign()
        if not assigned.training:
            raise MismatchError(
                f"the {assigned.schedule.name} schedule runs forwards only (it was made for an inference plan): step() "
                "trains; call forward(), or pass a training schedule"
            )
        inputs = as_tuple(inputs)
        check_inputs(self.program, inputs)
        m = self.program.microbatches
        if self._copies_behind:
            self._catch_up_copies()
        for p in self._every_copy:
            p.grad = None
        tracker = self._tracker() if measure_memory and any(t.type == "cpu" for t in self.devices.values()) else None
        self._reset_cuda_peaks()
        start = time.perf_counter()
        play = Play(
            self.program,
            self.devices,
            assigned.work,
            self._split(inputs),
            split_batch(targets, m),
            self.loss_fn,
            self.optimizers,
            tracker,
            self.servers,
        )
        with tracker if tracker is not None else contextlib.nullcontext():
            play.run()
            self._synchronize()
        step_ms = 1e3 * (time.perf_counter() - start)
        peaks = tracker.peaks() if tracker is not None else {}
        peaks.update(self._cuda_peaks())
        loss = float(sum(play.losses[k].to("cpu") for k in range(m)))
        outputs = concat_microbatches([play.outputs[k] for k in range(m)])
        return StepResult(loss, outputs, step_ms, peaks, play.order)

    # -- running ------------------------------------------------------------------------------
    def _split(self, inputs: tuple) -> list[dict[str, torch.Tensor]]:
        m = self.program.microbatches
        per_input = [split_batch(t, m) for t in inputs]
        return [{name: chunks[k] for name, chunks in zip(self.program.input_names, per_input)} for k in range(m)]

    @contextlib.contextmanager
    def _replicas_bound(self) -> Iterator[None]:
        """While open, every replica's module holds its stage device's parameters moved to the replica's
        torch device (module docstring), in place of its own copies, which it gets back on exit."""
        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        try:
            for stage, replicas in self.program.replicas.items():
                owner = self.program.programs[stage].parameters
                for device in replicas[1:]:
                    for holder, leaf, name in self._parameter_slots(device):
                        swapped.append((holder, leaf, holder._parameters[leaf]))
                        holder._parameters[leaf] = owner[name].to(self.devices[device])
            yield
        finally:
            for holder, leaf, own in reversed(swapped):
                holder._parameters[leaf] = own

    @torch.no_grad()
    def _catch_up_copies(self) -> None:
        """Copy every stage device's parameters into its replicas' and the parameter servers' copies."""
        owners = dict(self.named_parameters())
        for replicas in self.program.replicas.values():
            for device in replicas[1:]:
                for name, p in self.program.programs[device].parameters.items():
                    p.copy_(owners[name])
        for copies in self.servers.values():
            for name, p in copies.items():
                p.copy_(owners[name])
        self._copies_behind = False

    def _parameter_slots(self, device: str) -> list[tuple[nn.Module, str, str]]:
        """(submodule, attribute, name in the traced model) of every parameter of ``device``'s module,
        each alias of a shared parameter included."""
        part = self.program.programs[device]
        name_of = {id(p): name for name, p in part.parameters.items()}
        slots = []
        for path, p in part.module.named_parameters(remove_duplicate=False):
            prefix, _, leaf = path.rpartition(".")
            slots.append((part.module.get_submodule(prefix), leaf, name_of[id(p)]))
        return slots

    def _forward(self, feeds: dict[str, torch.Tensor], microbatch: int) -> Any:
        """Microbatch ``microbatch`` through every stage in the global order, each on the device that runs
        it (its replica), with differentiable copies (:meth:`__call__`, :meth:`forward`)."""
        runner = {d: self.program.runner(d, microbatch) for d in self.program.stage_devices}
        on = {d: self.devices[r] for d, r in runner.items()}  # stage device -> torch device of its runner
        interpreters = {
            d: DeviceInterpreter(self.program.programs[r].module, {n: feeds[n].to(on[d]) for n in self.program.programs[d].inputs})
            for d, r in runner.items()
        }
        flat: Any = ()
        with active(LocalComm(on)):
            for device, name in self.program.schedule:
                value = interpreters[device].advance(name)
                if device == self.program.output_device and name == "output":
                    flat = value
        # a replica of the output stage on another torch device: gathered where its stage device is
        return unflatten_outputs(self.program, to_device(flat, self.devices[self.program.output_device]))

    # -- memory -------------------------------------------------------------------------------
    def _owners(self) -> dict[int, str]:
        """id of every parameter and buffer -> the device that owns it."""
        return {
            id(t): device
            for device, part in self.program.programs.items()
            for t in [*part.parameters.values(), *part.buffers.values()]
        }

    def _tracker(self) -> MemoryTracker:
        """A tracker for the logical CPU devices, starting from the bytes of the parameters, buffers and
        optimizer state each holds; tensors made outside a device program (backward, update) count on
        the device of the tensors they are made from."""
        owners = self._owners()
        static = {d: 0 for d, t in self.devices.items() if t.type == "cpu"}

        def count(owned: torch.Tensor, t: torch.Tensor) -> None:
            if owners.get(id(owned)) in static:
                static[owners[id(owned)]] += t.numel() * t.element_size()

        for part in self.program.programs.values():
            for t in [*part.parameters.values(), *part.buffers.values()]:
                count(t, t)
        for optimizer in self.optimizers.values():
            for p, state in optimizer.state.items():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        count(p, value)
        return MemoryTracker(static, lambda t: owners.get(id(t)))

    def _reset_cuda_peaks(self) -> None:
        for device in set(self.devices.values()):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

    def _cuda_peaks(self) -> dict[str, int]:
        return {d: torch.cuda.max_memory_allocated(t) for d, t in self.devices.items() if t.type == "cuda"}

    def _synchronize(self) -> None:
        for device in set(self.devices.values()):
            if device.type == "cuda":
                torch.cuda.synchronize(device)

