"""Checkpoints of an averaging run: each rank saves its strategy (worker: model, optimizer, step count,
traffic, center or outer optimizer) or its center shard (server) to its own file.

A checkpoint is a state dict of tensors and plain values written as JSON with the tensors' raw bytes
(:mod:`runtime.plainfile`) and read back building nothing but those (graphc never unpickles). Loading into a freshly built strategy of the same kind, on the same ranks,
continues the same run: ``k`` steps, save, load, ``k`` steps gives the parameters of ``2 k`` steps
(given the same data in the same order; the step count restored tells a loop where it stands).
"""

from __future__ import annotations

from pathlib import Path

from graphc.ir.errors import ConfigurationError
from runtime.averaging.center import CenterServer
from runtime.averaging.strategy import Strategy
from runtime.plainfile import load_plain, save_plain


def checkpoint_path(directory: str | Path, rank: int) -> Path:
    """The file of rank ``rank`` in a checkpoint ``directory``."""
    return Path(directory) / f"rank-{rank}.plain"


def save_checkpoint(owner: Strategy | CenterServer, directory: str | Path, rank: int) -> Path:
    """Write ``owner``'s state to rank ``rank``'s file in ``directory`` (created if needed); its path."""
    path = checkpoint_path(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plain(owner.state_dict(), path)
    return path


def load_checkpoint(owner: Strategy | CenterServer, directory: str | Path, rank: int) -> None:
    """Restore ``owner`` (built as for the saved run) from rank ``rank``'s file in ``directory``."""
    path = checkpoint_path(directory, rank)
    if not path.exists():
        raise ConfigurationError(f"no checkpoint of rank {rank} at {path}; save_checkpoint writes one file per rank into the directory")
    owner.load_state_dict(load_plain(path))
