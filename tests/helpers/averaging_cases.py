"""A small regression task the averaging strategies' distributed tests train on, the same on every rank."""

from __future__ import annotations

import torch

TRUE_WEIGHTS = torch.tensor([[1.0], [-2.0], [0.5]])


def batch(rank: int, step: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Worker ``rank``'s minibatch at ``step`` (rank -1: the held-out set): y = x w*."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(size, 3, generator=g)
    return x, x @ TRUE_WEIGHTS


def model(seed: int) -> torch.nn.Module:
    """A small MLP, initialised from ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def train(strategy, rank: int, steps: int) -> None:
    """``steps`` local steps of ``strategy`` on ``rank``'s batches (the data follow ``strategy.steps``,
    so a resumed run sees the batches the whole run would)."""
    for _ in range(steps):
        strategy.model.zero_grad()
        x, y = batch(rank, strategy.steps)
        torch.nn.functional.mse_loss(strategy.model(x), y).backward()
        strategy.step()


def held_out_loss(net: torch.nn.Module, flat: torch.Tensor | None = None) -> float:
    """``net``'s loss on the held-out set, with its parameters set to ``flat`` first when given."""
    if flat is not None:
        torch.nn.utils.vector_to_parameters(flat, net.parameters())
    x, y = batch(-1, 0, size=256)
    with torch.no_grad():
        return torch.nn.functional.mse_loss(net(x), y).item()
