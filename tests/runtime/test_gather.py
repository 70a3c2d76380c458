"""runtime.gather: every rank's JSON values and tensors on every rank, without pickling."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from graphc.ir.errors import MismatchError
from runtime import init_from_env
from runtime.gather import all_gather_json, all_gather_tensors
from runtime.launch import spawn

pytestmark = pytest.mark.distributed


def gather_some(probe: bool = False) -> dict:
    """Each rank's JSON value (of a length that differs by rank) and tensors of several shapes and
    dtypes, gathered; and how often pickle was asked to load meanwhile (never, it must be; ``probe``
    also runs ``all_gather_object``, which the count must see)."""
    init_from_env()
    rank = dist.get_rank()
    calls = []
    real_loads, real_unpickler = pickle.loads, c10d._unpickler  # what all_gather_object unpickles with
    pickle.loads = lambda *a, **k: calls.append(a) or real_loads(*a, **k)
    c10d._unpickler = lambda *a, **k: calls.append(a) or real_unpickler(*a, **k)
    try:
        values = all_gather_json({"rank": rank, "times": [0.5] * (rank + 1), "name": "é" * rank, "none": None})
        tensors = all_gather_tensors([
            torch.full((rank + 1, 2), float(rank)),  # shapes differ by rank
            torch.tensor(rank + 0.25, dtype=torch.float64),  # a scalar
            torch.tensor([rank % 2 == 0, True]),  # bools
            torch.arange(3, dtype=torch.int64) * rank,
            torch.empty(0, 4),
        ])  # fmt: skip
        if probe:  # the check's own check: all_gather_object is seen unpickling
            dist.all_gather_object([None] * dist.get_world_size(), rank)
    finally:
        pickle.loads, c10d._unpickler = real_loads, real_unpickler
    return {"values": values, "tensors": tensors, "unpickled": len(calls)}


def test_every_rank_gets_every_ranks_values_and_tensors_as_sent():
    outcomes = spawn(gather_some, 3, timeout_s=120)
    assert all(o.ok for o in outcomes), [o.traceback for o in outcomes]
    for o in outcomes:
        assert o.result["unpickled"] == 0
        assert o.result["values"] == [
            {"rank": r, "times": [0.5] * (r + 1), "name": "é" * r, "none": None} for r in range(3)
        ]  # fmt: skip
        for r, (full, scalar, flags, ints, empty) in enumerate(o.result["tensors"]):
            assert torch.equal(full, torch.full((r + 1, 2), float(r)))
            assert scalar.dtype == torch.float64 and scalar.shape == () and scalar.item() == r + 0.25
            assert torch.equal(flags, torch.tensor([r % 2 == 0, True]))
            assert torch.equal(ints, torch.arange(3, dtype=torch.int64) * r)
            assert empty.shape == (0, 4)


def test_the_count_of_unpickling_sees_all_gather_object():
    outcomes = spawn(gather_some, 2, (True,), timeout_s=120)
    assert all(o.ok and o.result["unpickled"] == 2 for o in outcomes), [(o.result, o.traceback) for o in outcomes]


def gather_unequal_counts() -> None:
    init_from_env()
    all_gather_tensors([torch.zeros(2)] * (dist.get_rank() + 1))


def test_ranks_gathering_different_numbers_of_tensors_is_an_error_on_each():
    outcomes = spawn(gather_unequal_counts, 2, timeout_s=120)
    for o in outcomes:
        assert isinstance(o.error, MismatchError) and "different numbers of tensors: [1, 2]" in str(o.error), o.traceback
