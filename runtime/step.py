"""What the executors share: checking a step's inputs, microbatches, the loss, and the step's result.

Loss. ``loss_fn(outputs, targets)`` (or ``loss_fn(outputs)`` when a step gets no targets) returns a
scalar that is a *mean* over the samples of the batch, as ``F.cross_entropy`` is. With ``m``
microbatches of equal size the step back-propagates ``loss_fn(outputs_k, targets_k) / m`` for each
microbatch ``k``, so the summed gradients equal the full batch's. :func:`graphc.zoo.zoo_loss` adapts a
zoo model's loss, which scores against the model's own targets, to this form.

Inputs and targets are split along their first (batch) dimension. Batch norm computes its statistics
per microbatch, so a pipelined model with batch norm trains on other numbers than one full-batch step
(GPipe has the same property); models without it give the same gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from runtime.errors import MismatchError
from runtime.partition import PartitionedProgram

LossFn = Callable[..., torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class StepResult:
    """What one step gave on this process.

    Attributes:
        loss: the step's loss (mean over microbatches), where the loss is computed; None elsewhere.
        outputs: the model's outputs for the whole batch where they are gathered; None elsewhere.
        step_ms: wall time of the step, from the first op to the optimizer's update.
        peak_memory_bytes: device -> peak bytes of live tensors during the step, when measured.
        order: device -> the work it ran, in order (``F0``, ``B0``, ``AR``, ``OPT``:
            :class:`runtime.schedule.Work`), for the devices this process runs.
        timeline: device -> ``[work, start_ms, end_ms]`` of each unit it ran (``sync``: the collectives
            and sends it waited for at the end), from :attr:`started_ns`; where the executor records it.
        started_ns: the step's start on the wall clock (``time.time_ns()``), which lines up the
            timelines of ranks on one machine (of several machines, as far as their clocks agree).
    """

    loss: float | None
    outputs: Any
    step_ms: float
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)
    timeline: dict[str, list[list[Any]]] = field(default_factory=dict)
    started_ns: int = 0


def as_tuple(inputs: Any) -> tuple:
    return inputs if isinstance(inputs, tuple) else tuple(inputs) if isinstance(inputs, list) else (inputs,)


def check_inputs(program: PartitionedProgram, inputs: Sequence[Any]) -> None:
    """Refuse inputs of another number, shape or dtype than the program's (times the microbatches)."""
    m = program.microbatches
    if len(inputs) != len(program.input_specs):
        raise MismatchError(
            f"the program takes {len(program.input_specs)} input(s) ({', '.join(program.input_names)}), got {len(inputs)}"
        )
    for name, spec, value in zip(program.input_names, program.input_specs, inputs):
        expected = (spec.shape[0] * m, *spec.shape[1:]) if spec.shape else spec.shape
        if not isinstance(value, torch.Tensor):
            raise MismatchError(f"input {name!r}: expected a tensor, got {type(value).__name__}")
        if tuple(value.shape) != expected or value.dtype != spec.dtype:
            split = f" ({m} microbatches of {list(spec.shape)})" if m > 1 else ""
            raise MismatchError(
                f"input {name!r}: the plan runs shape {list(expected)}{split} of {spec.dtype}, got "
                f"{list(value.shape)} of {value.dtype}; re-trace and re-plan for these inputs"
            )


def split_batch(value: Any, m: int) -> list[Any]:
    """``m`` microbatches of a tensor or a nest of tensors, split along dimension 0."""
    if value is None:
        return [None] * m
    leaves, spec = tree_flatten(value)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and (leaf.dim() == 0 or leaf.shape[0] % m):
            raise MismatchError(f"a tensor of shape {list(leaf.shape)} cannot be split into {m} equal microbatches")
    chunks = [leaf.chunk(m) if isinstance(leaf, torch.Tensor) else [leaf] * m for leaf in leaves]
    return [tree_unflatten([c[k] for c in chunks], spec) for k in range(m)]


def microbatch_loss(loss_fn: LossFn, outputs: Any, targets: Any, microbatches: int) -> torch.Tensor:
    """The loss of one microbatch, scaled by ``1 / microbatches``."""
    loss = loss_fn(outputs) if targets is None else loss_fn(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise MismatchError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    return loss.reshape(()) / microbatches if microbatches > 1 else loss.reshape(())


def concat_microbatches(outputs: list[Any]) -> Any:
    """Join the microbatches' outputs along dimension 0 (a single microbatch is returned as is)."""
    if len(outputs) == 1:
        return outputs[0]
    return tree_map(lambda *parts: torch.cat(parts) if isinstance(parts[0], torch.Tensor) else parts[0], *outputs)


def unflatten_outputs(program: PartitionedProgram, flat: Sequence[Any]) -> Any:
    """The flat outputs of the output device as the traced program returns them."""
    return tree_unflatten(list(flat), program.out_spec)


def to_device(value: Any, device: torch.device) -> Any:
    """Every tensor of a nest moved to ``device`` (targets go where the loss is computed)."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)
