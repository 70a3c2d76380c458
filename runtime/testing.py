"""Testing helpers: checking a placed execution against eager PyTorch on one device.

(As ``torch.testing`` is to torch: what graphc's tests, the examples and the demo use to check a placed
run; ``runtime`` itself exports what runs one.) A plan is only correct if it computes what the model computes. :func:`eager_run` trains the original
model for some steps the ordinary way and records losses, outputs, gradients and parameters;
:func:`relative_difference` compares them with what an executor gave, tensor by tensor, relative to
the eager tensor's norm (float32 sums in another order differ in the last bits, and batch norm over a
tiny batch magnifies that, so an absolute bound would be either loose or flaky).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runtime.step import LossFn, OptimizerFactory, as_tuple


@dataclass
class EagerRun:
    """What eager training gave.

    Attributes:
        losses: the loss of every step.
        outputs: the outputs of the last step's forward.
        grads: parameter name -> gradient of the last step.
        params: parameter name -> value after the last step.
    """

    losses: list[float] = field(default_factory=list)
    outputs: Any = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def eager_run(
    model: nn.Module | Callable[..., Any],
    parameters: Iterable[tuple[str, nn.Parameter]],
    inputs: Any,
    targets: Any,
    loss_fn: LossFn,
    optimizer: OptimizerFactory | None = None,
    steps: int = 1,
) -> EagerRun:
    """Train ``model`` (an ``nn.Module`` or any callable) for ``steps`` on one batch the ordinary way.

    ``parameters`` are its named parameters (those the optimizer updates and whose gradients are kept).
    """
    named = dict(parameters)
    opt = optimizer(list(named.values())) if optimizer is not None else None
    run = EagerRun()
    for _ in range(steps):
        for p in named.values():
            p.grad = None
        outputs = model(*as_tuple(inputs))
        loss = loss_fn(outputs) if targets is None else loss_fn(outputs, targets)
        loss.backward()
        if opt is not None:
            opt.step()
        run.losses.append(float(loss.detach()))
        run.outputs = outputs
    run.grads = {n: p.grad.detach().clone() for n, p in named.items() if p.grad is not None}
    run.params = {n: p.detach().clone() for n, p in named.items()}
    return run


def relative_difference(ours: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], atol: float = 1e-6) -> tuple[float, str]:
    """The largest ``|ours - reference| / (|reference| + atol)`` (Frobenius norms) over the names, and its
    name. A name in one mapping and not the other counts as infinitely different."""
    missing = sorted(set(ours) ^ set(reference))
    if missing:
        return float("inf"), missing[0]
    worst, where = 0.0, ""
    for name, ref in reference.items():
        ref = ref.detach().double()  # integer state (batch counts) too
        mine = ours[name].detach().to(ref.device).double()
        diff = float((mine - ref).norm()) / (float(ref.norm()) + atol)
        if diff > worst:
            worst, where = diff, name
    return worst, where
