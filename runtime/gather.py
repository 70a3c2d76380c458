"""Gathering values from every rank without pickling (graphc never unpickles).

``torch.distributed.all_gather_object`` pickles the value and unpickles what the other ranks send, so
a rank would run whatever code a peer's bytes name. Here plain values travel as JSON text and tensors
as their own bytes, each in ``uint8`` tensors through ``all_gather`` (padded to the longest rank's,
whose length is gathered first): :func:`all_gather_json` for numbers, strings, lists and dicts;
:func:`all_gather_tensors` for tensors of any shape and dtype.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from graphc.ir.errors import MismatchError


def all_gather_json(value: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (a collective: all ranks of ``group`` call it).

    ``value`` must be JSON: None, bools, numbers, strings, lists and dicts with string keys; what comes
    back is what ``json.loads`` makes of it (tuples come back as lists, integer keys as strings)."""
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
    sizes = _gather_sizes(data.numel(), group)
    return [json.loads(bytes(chunk.cpu().numpy())) for chunk in _gather_bytes(data, sizes, group)]


def all_gather_tensors(tensors: Sequence[torch.Tensor], group: dist.ProcessGroup | None = None) -> list[list[torch.Tensor]]:
    """Every rank's ``tensors`` (each rank the same number, of any shapes and dtypes), in rank order, on
    every rank, on this rank's device of ``group``'s backend (a collective: all ranks call it)."""
    metas = all_gather_json([[list(t.shape), str(t.dtype).removeprefix("torch.")] for t in tensors], group)
    if len({len(m) for m in metas}) != 1:
        raise MismatchError(f"all_gather_tensors: the ranks gather different numbers of tensors: {[len(m) for m in metas]}")
    gathered: list[list[torch.Tensor]] = [[] for _ in metas]
    for i, tensor in enumerate(tensors):
        kinds = [(shape, getattr(torch, dtype)) for shape, dtype in (m[i] for m in metas)]
        sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in kinds]
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        for rank, (chunk, (shape, dtype)) in enumerate(zip(_gather_bytes(raw, sizes, group), kinds)):
            gathered[rank].append(chunk.view(dtype).reshape(shape))
    return gathered


def _device(group: dist.ProcessGroup | None) -> torch.device:
    """Where ``group``'s collectives take their tensors: this process's GPU under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_sizes(size: int, group: dist.ProcessGroup | None) -> list[int]:
    """Every rank's ``size``, in rank order."""
    mine = torch.tensor([size], dtype=torch.int64, device=_device(group))
    sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, mine, group=group)
    return [int(s.item()) for s in sizes]


def _gather_bytes(data: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """Every rank's ``uint8`` vector ``data`` (of ``sizes[rank]`` bytes), in rank order."""
    longest = max(max(sizes), 1)
    device = _device(group)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded, group=group)
    return [chunk[:size].clone() for chunk, size in zip(chunks, sizes)]  # each its own storage, no padding
