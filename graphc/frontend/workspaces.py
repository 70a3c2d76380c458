"""Workspaces that fake tensors under-report: the bytes an op saves for its backward that its fake
kernel says are none.

The annotation (:mod:`graphc.frontend.annotate`) learns what a node keeps for its backward from the
tensors the backward saves, on fake tensors. That is exact wherever the fake kernel gives every output
its real size. One kernel does not: on the CPU, ``nn.LSTM`` in training runs
oneDNN's ``aten.mkldnn_rnn_layer``, whose fake kernel returns an empty ``workspace``, while the real one
returns the gates and states of every time step (16 times the output's bytes or so, in oneDNN's own
layout with page-aligned parts), and its backward saves it. GNMT's encoder layers keep 3 to 6 times
what the fake run says.

:class:`WorkspaceCounter` is a dispatch mode that notes every such call while a node runs on fake
tensors. :meth:`WorkspaceCounter.saved_bytes` then gives the real workspace bytes by running the real
CPU kernel on zeros of the same shapes (:func:`mkldnn_rnn_workspace_bytes`, once per shape). oneDNN's
layout is its own and changes between versions, so it is measured, not computed. A long sequence is
measured at two shorter lengths and extrapolated: the workspace grows linearly with the sequence, up to
the page alignment of its parts, and the probe stays cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: Sequences up to this many steps are probed at their own length; longer ones at half this many and this
#: many steps, and extrapolated.
PROBE_STEPS = 16


@dataclass(frozen=True)
class RnnLayerShape:
    """What one ``aten.mkldnn_rnn_layer`` call's workspace depends on: its tensors' shapes and dtype and
    its configuration (the op's non-tensor arguments, ``batch_sizes`` excepted, which a packed sequence
    would need and the CPU kernel refuses)."""

    input: tuple[int, ...]
    weights: tuple[tuple[int, ...], ...]
    hx: tuple[int, ...] | None
    cx: tuple[int, ...] | None
    dtype: torch.dtype
    reverse: bool
    mode: int
    hidden_size: int
    num_layers: int
    has_biases: bool
    bidirectional: bool
    batch_first: bool


class WorkspaceCounter(TorchDispatchMode):
    """Notes the ops whose fake kernel under-reports their saved workspace (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn_layers: list[RnnLayerShape] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is aten.mkldnn_rnn_layer.default and _saves_workspace(args, kwargs or {}):
            self.rnn_layers.append(_rnn_layer_shape(args, kwargs or {}))
        return out

    def saved_bytes(self) -> float:
        """The real bytes of the workspaces noted, which the fake run counted as none."""
        return float(sum(mkldnn_rnn_workspace_bytes(shape) for shape in self.rnn_layers))


_RNN_ARGS = ("input", "w0", "w1", "w2", "w3", "hx_", "cx_", "reverse", "batch_sizes", "mode", "hidden_size",
             "num_layers", "has_biases", "bidirectional", "batch_first", "train")  # fmt: skip


def _named(args: tuple, kwargs: dict) -> dict[str, Any]:
    return {**dict(zip(_RNN_ARGS, args)), **kwargs}


def _saves_workspace(args: tuple, kwargs: dict) -> bool:
    """A training call whose backward will run (so the workspace is saved), on the CPU."""
    a = _named(args, kwargs)
    tensors = [a[k] for k in ("input", "w0", "w1", "w2", "w3", "hx_", "cx_") if isinstance(a.get(k), torch.Tensor)]
    return (
        bool(a["train"])
        and a["input"].device.type == "cpu"
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
    )


def _rnn_layer_shape(args: tuple, kwargs: dict) -> RnnLayerShape:
    a = _named(args, kwargs)

    def shape(t: Any) -> tuple[int, ...] | None:
        return tuple(t.shape) if isinstance(t, torch.Tensor) else None

    return RnnLayerShape(
        input=tuple(a["input"].shape), weights=tuple(tuple(a[k].shape) for k in ("w0", "w1", "w2", "w3")), hx=shape(a["hx_"]),
        cx=shape(a["cx_"]), dtype=a["input"].dtype, reverse=bool(a["reverse"]), mode=int(a["mode"]),
        hidden_size=int(a["hidden_size"]), num_layers=int(a["num_layers"]), has_biases=bool(a["has_biases"]),
        bidirectional=bool(a["bidirectional"]), batch_first=bool(a["batch_first"]),
    )  # fmt: skip


@functools.cache
def mkldnn_rnn_workspace_bytes(shape: RnnLayerShape) -> int:
    """Bytes of the workspace the CPU kernel makes for ``shape``, measured on zeros (module docstring):
    at the sequence's own length up to :data:`PROBE_STEPS` steps, else extrapolated linearly from half
    of that and all of it."""
    seq_dim = 1 if shape.batch_first else 0
    steps = shape.input[seq_dim]
    if steps <= PROBE_STEPS:
        return _probe(shape, steps)
    short, long = _probe(shape, PROBE_STEPS // 2), _probe(shape, PROBE_STEPS)
    per_step = (long - short) / (PROBE_STEPS - PROBE_STEPS // 2)
    return round(long + per_step * (steps - PROBE_STEPS))


def _probe(shape: RnnLayerShape, steps: int) -> int:
    """Run the real kernel on zeros with the sequence cut to ``steps``; the workspace's bytes. (Nothing
    requires a gradient, so no autograd graph is kept.)"""
    seq_dim = 1 if shape.batch_first else 0
    size = list(shape.input)
    size[seq_dim] = steps
    with unset_fake_temporarily(), torch.enable_grad():  # the kernel makes no workspace without grad mode

        def zeros(s: tuple[int, ...] | None) -> torch.Tensor | None:
            return None if s is None else torch.zeros(s, dtype=shape.dtype)

        workspace = aten.mkldnn_rnn_layer(
            zeros(tuple(size)), *(zeros(w) for w in shape.weights), zeros(shape.hx), zeros(shape.cx), shape.reverse,
            [], shape.mode, shape.hidden_size, shape.num_layers, shape.has_biases, shape.bidirectional,
            shape.batch_first, True,
        )[3]  # fmt: skip
        return workspace.untyped_storage().nbytes()
