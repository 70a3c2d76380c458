"""runtime.plainfile: plain values to a file and back, exactly, without pickle."""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict

import pytest
import torch

from graphc.ir.errors import ConfigurationError, FormatError
from runtime.plainfile import load_plain, save_plain


def test_plain_values_come_back_exactly_and_pickle_is_never_asked(tmp_path, monkeypatch):
    value = {
        "none": None, "flags": [True, False], "int": -3, "big": 2**70, "float": 0.1, "text": "é\n",
        "odd floats": (math.inf, -math.inf), 7: "an int key", (1, "two"): "a tuple key",
        "tensors": [torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.tensor(2.5, dtype=torch.float64),
                    torch.tensor([True, False]), torch.empty(0, 4), torch.ones(3, dtype=torch.bfloat16)[::2]],
        "state": OrderedDict(step=torch.tensor(4.0), betas=(0.9, 0.999)),
    }  # fmt: skip
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: calls.append(a))
    save_plain({**value, "nan": math.nan}, tmp_path / "v.plain")
    back = load_plain(tmp_path / "v.plain")
    assert calls == []
    assert math.isnan(back.pop("nan"))
    tensors, expected = back.pop("tensors"), value.pop("tensors")
    state = back.pop("state")
    value.pop("state")
    assert back == value and type(back["odd floats"]) is tuple
    for got, want in zip(tensors, expected):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    assert torch.equal(state["step"], torch.tensor(4.0)) and state["betas"] == (0.9, 0.999)


def test_what_is_not_plain_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigurationError, match="a Linear is not a plain value"):
        save_plain({"model": torch.nn.Linear(2, 2)}, tmp_path / "v.plain")


def test_a_file_that_is_not_one_of_plain_values_is_refused(tmp_path):
    torch.save({"x": torch.ones(2)}, tmp_path / "torch.pt")  # a pickle: never read
    with pytest.raises(FormatError, match="not a file of plain values"):
        load_plain(tmp_path / "torch.pt")
    save_plain([torch.ones(4)], tmp_path / "cut.plain")
    (tmp_path / "short.plain").write_bytes((tmp_path / "cut.plain").read_bytes()[:-4])
    with pytest.raises(FormatError, match="do not fit the file"):
        load_plain(tmp_path / "short.plain")
