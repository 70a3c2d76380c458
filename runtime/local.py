"""The local executor: one process drives every device of a partitioned program.

Each plan device maps to a torch device: ``cuda:i`` names itself, other GPU names take the CUDA devices
in order when there are enough, and everything else, like the ``cpuN`` workers of the ``local``
cluster, runs on the CPU as a *logical* device. The device programs run interleaved in the partition's
global order (:attr:`PartitionedProgram.schedule`), node by node, each device reading only its own
values; a transfer copies the tensor to the receiving device (a clone between logical devices), so
every device holds its own copy. Copies are differentiable, so one ``backward`` of the loss carries the
gradients across every cut; each parameter lives on the device that owns it and is updated there.

On CUDA the kernels of different GPUs overlap because launches are asynchronous; on logical CPU
devices the run is sequential. Either way the numbers are those of eager PyTorch on one device (up to
float32 rounding of ops that run in another order). Microbatches run as GPipe does: all forwards,
then all backwards. Random ops draw from their torch device's generator in the global run order: on
logical CPU devices with one microbatch and the traced program's order, the masks of eager dropout.

A replicated stage (:mod:`runtime.partition`) runs microbatch ``k`` on its replica ``k mod r``, each
replica with its own copy of the parameters; after the backward, :meth:`LocalExecutor.step` gives every
replica the sum of the replicas' gradients (the all-reduce of the distributed executor, summed in
replica order), so the copies stay equal. A differentiable call (:meth:`LocalExecutor.__call__`) cannot
sum gradients that a later ``backward`` makes, so it refuses a program with replicated stages.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from runtime.comm import LocalComm, active
from runtime.errors import MismatchError
from runtime.measure import MemoryTracker
from runtime.partition import PartitionedProgram
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


class _DeviceInterpreter(fx.Interpreter):
    """Runs one device program node by node, as the global schedule asks, freeing values after last use."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.nodes = {n.name: n for n in module.graph.nodes}
        self.feeds: dict[str, torch.Tensor] = {}

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return self.feeds[target]

    def advance(self, name: str) -> Any:
        node = self.nodes[name]
        value = self.run_node(node)
        self.env[node] = value
        for dead in self.user_to_last_uses.get(node, []):
            del self.env[dead]
        return value


class LocalExecutor:
    """Runs a :class:`PartitionedProgram` in this process (see the module docstring).

    Args:
        program: the partitioned program; the executor moves each device's parameters and buffers to
            that device's torch device and trains them in place.
        loss_fn: ``loss_fn(outputs, targets)`` (see :mod:`runtime.step`); needed for :meth:`step`.
        optimizer: builds the optimizer from the parameters, e.g. ``lambda ps: torch.optim.SGD(ps, lr=0.1)``;
            None: :meth:`step` computes gradients and leaves them in ``.grad``.
        devices: plan device -> torch device, where the default mapping does not suit.
    """

    def __init__(
        self,
        program: PartitionedProgram,
        *,
        loss_fn: LossFn | None = None,
        optimizer: OptimizerFactory | None = None,
        devices: Mapping[str, str | torch.device] | None = None,
    ) -> None:
        self.program = program
        self.loss_fn = loss_fn
        self.devices = torch_devices(program.devices, devices)
        for device, part in program.programs.items():
            part.module.to(self.devices[device])
        self._every_copy = [p for part in program.programs.values() for p in part.parameters.values()]
        self.optimizer = optimizer(self._every_copy) if optimizer is not None else None

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter once, by its name in the traced model, on the device that owns it (a replicated
        stage's first device; its replicas hold equal copies)."""
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
        them sends gradients back across every cut into the parameters (as ``graphc.compile`` needs)."""
        if self.program.replicas:
            raise MismatchError(
                f"the program replicates stages ({', '.join(self.program.replicas)}), whose gradients a step sums "
                "over the replicas: train it with step(), or partition a plan without replicated stages"
            )
        check_inputs(self.program, inputs)
        return concat_microbatches([self._forward(mb, k) for k, mb in enumerate(self._split(tuple(inputs)))])

    def forward(self, inputs: Any) -> Any:
        """The model's outputs for ``inputs`` without gradients (inference)."""
        inputs = as_tuple(inputs)
        check_inputs(self.program, inputs)
        with torch.no_grad():
            return concat_microbatches([self._forward(mb, k) for k, mb in enumerate(self._split(inputs))])

    def step(self, inputs: Any, targets: Any = None, *, measure_memory: bool = False) -> StepResult:
        """One training step: forward and backward of every microbatch, then the optimizer's update.

        With ``measure_memory`` the step also records each device's peak bytes of live tensors (slower:
        every op is intercepted; CUDA devices read the allocator's statistics instead).
        """
        if self.loss_fn is None:
            raise MismatchError("LocalExecutor.step needs a loss_fn; pass loss_fn= (or call forward())")
        inputs = as_tuple(inputs)
        check_inputs(self.program, inputs)
        m = self.program.microbatches
        for p in self._every_copy:
            p.grad = None
        tracker = self._tracker() if measure_memory and any(t.type == "cpu" for t in self.devices.values()) else None
        self._reset_cuda_peaks()
        start = time.perf_counter()
        with tracker if tracker is not None else contextlib.nullcontext():
            losses, outputs = [], []
            for k, (mb, mb_targets) in enumerate(zip(self._split(inputs), split_batch(targets, m))):
                out = self._forward(mb, k, tracker)
                outputs.append(out)
                on_output = self.devices[self.program.runner(self.program.output_device, k)]
                losses.append(microbatch_loss(self.loss_fn, out, to_device(mb_targets, on_output), m))
            for loss in losses:
                loss.backward()
            self._sum_replica_gradients()
            if self.optimizer is not None:
                self.optimizer.step()
            self._synchronize()
        step_ms = 1e3 * (time.perf_counter() - start)
        peaks = tracker.peaks() if tracker is not None else {}
        peaks.update(self._cuda_peaks())
        loss = float(sum(loss.detach().to("cpu") for loss in losses))
        return StepResult(loss, concat_microbatches([tree_map(_detach, o) for o in outputs]), step_ms, peaks)

    # -- running ------------------------------------------------------------------------------
    def _split(self, inputs: tuple) -> list[dict[str, torch.Tensor]]:
        m = self.program.microbatches
        per_input = [split_batch(t, m) for t in inputs]
        return [{name: chunks[k] for name, chunks in zip(self.program.input_names, per_input)} for k in range(m)]

    def _forward(self, feeds: dict[str, torch.Tensor], microbatch: int, tracker: MemoryTracker | None = None) -> Any:
        """Microbatch ``microbatch`` through every stage, each on the device that runs it (its replica)."""
        runner = {d: self.program.runner(d, microbatch) for d in self.program.stage_devices}
        on = {d: self.devices[r] for d, r in runner.items()}  # stage device -> torch device of its runner
        interpreters = {d: _DeviceInterpreter(self.program.programs[r].module) for d, r in runner.items()}
        for device, interp in interpreters.items():
            interp.feeds = {n: feeds[n].to(on[device]) for n in self.program.programs[device].inputs}
        flat: Any = ()
        with active(LocalComm(on)):
            for device, name in self.program.schedule:
                if tracker is not None:
                    tracker.current = runner[device]
                value = interpreters[device].advance(name)
                if device == self.program.output_device and name == "output":
                    flat = value
        if tracker is not None:
            tracker.current = None
        return unflatten_outputs(self.program, flat)

    def _sum_replica_gradients(self) -> None:
        """Give every replica of a replicated stage the sum of the replicas' gradients (module docstring)."""
        for stage, replicas in self.program.replicas.items():
            for name in self.program.programs[stage].parameters:
                copies = [self.program.programs[r].parameters[name] for r in replicas]
                grads = [p.grad.to(self.devices[stage]) for p in copies if p.grad is not None]
                if not grads:
                    continue
                total = grads[0]
                for grad in grads[1:]:
                    total = total + grad
                for p, replica in zip(copies, replicas):
                    p.grad = total.to(self.devices[replica], copy=True)

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
        if self.optimizer is not None:
            for p, state in self.optimizer.state.items():
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


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value
