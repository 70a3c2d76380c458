"""FLOP counts of ATen operators, and a dispatch mode that adds them up while ops run on fake tensors.

Conventions (the ones placement papers and the commonly quoted model figures use):

* a multiply-add counts as 2 FLOPs: ``mm(m×k, k×n)`` is ``2·m·k·n``; the bias of ``addmm`` is folded
  into the multiply-adds and not counted again;
* a convolution is ``2 · (output elements) · (input channels / groups) · (kernel elements)``, and its
  backward ``convolution_backward`` counts the same per gradient it computes (input and/or weight);
* scaled-dot-product attention is ``4·B·H·L·S·D`` forward (the two matmuls ``QKᵀ`` and ``PV``) and
  twice that backward (four matmuls: dQ, dK, dV, dP);
* a pointwise op (tagged ``pointwise`` in ATen) costs one FLOP per output element; softmax-like,
  normalisation and reduction ops cost a small constant per input element (below);
* views, copies, memory allocation and indexing cost 0 FLOPs (their cost is memory traffic, which the
  annotation records separately as bytes read and written).

Only the shapes of the tensors are read, so the count works on fake and meta tensors: nothing is
computed and no memory is allocated.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

FlopFormula = Callable[[tuple, dict, Any], float]


def _numel(shape: Any) -> int:
    return math.prod(shape)


def _mm(args: tuple, kwargs: dict, out: Any) -> float:
    a, b = args[0], args[1]
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args: tuple, kwargs: dict, out: Any) -> float:
    return _mm(args[1:], kwargs, out)


def _bmm(args: tuple, kwargs: dict, out: Any) -> float:
    a, b = args[0], args[1]
    return 2.0 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _baddbmm(args: tuple, kwargs: dict, out: Any) -> float:
    return _bmm(args[1:], kwargs, out)


def _conv_flops(x_shape: Any, w_shape: Any, out_shape: Any, transposed: bool) -> float:
    """``2 · out_elements · (C_in/groups) · kernel_elements``; ``w`` is ``(C_out, C_in/groups, *k)``."""
    per_output = w_shape[1] * _numel(w_shape[2:])
    if transposed:  # weight is (C_in, C_out/groups, *k): every input element scatters into the output
        return 2.0 * _numel(x_shape) * w_shape[1] * _numel(w_shape[2:])
    return 2.0 * _numel(out_shape) * per_output


def _convolution(args: tuple, kwargs: dict, out: Any) -> float:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    return _conv_flops(x.shape, w.shape, out.shape, transposed)


def _convolution_backward(args: tuple, kwargs: dict, out: Any) -> float:
    # (grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, ..., output_mask)
    grad_out, x, w = args[0], args[1], args[2]
    transposed = bool(args[7])
    output_mask = args[-1]
    one_gradient = _conv_flops(x.shape, w.shape, grad_out.shape, transposed)
    return one_gradient * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _attention_forward(args: tuple, kwargs: dict, out: Any) -> float:
    q, k = args[0], args[1]
    *batch, length, head_dim = q.shape
    return 4.0 * _numel(batch) * length * k.shape[-2] * head_dim


def _attention_backward(args: tuple, kwargs: dict, out: Any) -> float:
    q, k = args[1], args[2]  # args[0] is the gradient of the output
    return 2.0 * _attention_forward((q, k), kwargs, out)


def _lstm_layer_flops(steps_times_batch: int, input_size: int, hidden: int) -> float:
    """One LSTM layer, one direction: the four gates' matmuls plus ~10 pointwise ops per hidden unit."""
    return 2.0 * steps_times_batch * 4 * hidden * (input_size + hidden) + 10.0 * steps_times_batch * hidden


def _mkldnn_rnn_layer(args: tuple, kwargs: dict, out: Any) -> float:
    x, w_ih = args[0], args[1]
    hidden = w_ih.shape[0] // 4
    return _lstm_layer_flops(_numel(x.shape[:-1]), x.shape[-1], hidden)


def _mkldnn_rnn_layer_backward(args: tuple, kwargs: dict, out: Any) -> float:
    """Gradients w.r.t. the input and the weights: twice the forward matmuls."""
    return 2.0 * _mkldnn_rnn_layer(args, kwargs, out)


def _lstm(args: tuple, kwargs: dict, out: Any) -> float:
    """``aten.lstm.input`` seen whole: every layer and direction (weights come 4 per layer-direction)."""
    x, params, has_biases = args[0], args[2], args[3]
    per_layer_direction = 4 if has_biases else 2
    steps_times_batch = _numel(x.shape[:-1])
    return sum(
        _lstm_layer_flops(steps_times_batch, params[i].shape[1], params[i].shape[0] // 4)
        for i in range(0, len(params), per_layer_direction)
    )


def _per_input_element(factor: float) -> FlopFormula:
    def formula(args: tuple, kwargs: dict, out: Any) -> float:
        return factor * _numel(args[0].shape)

    return formula


# Matmul-like operators, counted exactly; the rest is pointwise (1 FLOP per output element) or free.
_FORMULAS: dict[Any, FlopFormula] = {
    aten.mm.default: _mm,
    aten.addmm.default: _addmm,
    aten.bmm.default: _bmm,
    aten.baddbmm.default: _baddbmm,
    aten.convolution.default: _convolution,
    aten.convolution_backward.default: _convolution_backward,
    aten._scaled_dot_product_flash_attention_for_cpu.default: _attention_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default: _attention_backward,
    aten._scaled_dot_product_efficient_attention.default: _attention_forward,
    aten._scaled_dot_product_efficient_attention_backward.default: _attention_backward,
    aten._scaled_dot_product_flash_attention.default: _attention_forward,
    aten._scaled_dot_product_flash_attention_backward.default: _attention_backward,
    aten._scaled_dot_product_cudnn_attention.default: _attention_forward,
    aten._scaled_dot_product_cudnn_attention_backward.default: _attention_backward,
    aten.mkldnn_rnn_layer.default: _mkldnn_rnn_layer,
    aten.mkldnn_rnn_layer_backward.default: _mkldnn_rnn_layer_backward,
    aten.lstm.input: _lstm,
    # normalisations: mean, variance, normalise, scale and shift
    aten.native_batch_norm.default: _per_input_element(5.0),
    aten._native_batch_norm_legit.default: _per_input_element(5.0),
    aten._native_batch_norm_legit_functional.default: _per_input_element(5.0),
    aten._native_batch_norm_legit_no_training.default: _per_input_element(2.0),
    aten.native_batch_norm_backward.default: _per_input_element(8.0),
    aten.native_layer_norm.default: _per_input_element(5.0),
    aten.native_layer_norm_backward.default: _per_input_element(8.0),
    # softmax: max, subtract-exp, sum, divide
    aten._softmax.default: _per_input_element(4.0),
    aten._log_softmax.default: _per_input_element(4.0),
    aten._softmax_backward_data.default: _per_input_element(3.0),
    aten._log_softmax_backward_data.default: _per_input_element(3.0),
    # reductions: one operation per input element
    aten.sum.default: _per_input_element(1.0),
    aten.sum.dim_IntList: _per_input_element(1.0),
    aten.mean.default: _per_input_element(1.0),
    aten.mean.dim: _per_input_element(1.0),
    aten.amax.default: _per_input_element(1.0),
    aten.max_pool2d_with_indices.default: lambda a, k, out: _numel(out[0].shape) * _numel(a[1]),
    aten.avg_pool2d.default: lambda a, k, out: _numel(out.shape) * _numel(a[1]),
    aten._adaptive_avg_pool2d.default: _per_input_element(1.0),
    # backward of pooling and embedding: a scatter of the output gradient, one op per element
    aten.max_pool2d_with_indices_backward.default: lambda a, k, out: _numel(a[1].shape),
    aten.avg_pool2d_backward.default: lambda a, k, out: _numel(a[1].shape),
    aten._adaptive_avg_pool2d_backward.default: lambda a, k, out: _numel(a[1].shape),
    aten.embedding_dense_backward.default: _per_input_element(1.0),
}


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> float:
    """FLOPs of one ATen call ``func(*args, **kwargs) -> out`` (see the module docstring)."""
    formula = _FORMULAS.get(func)
    if formula is not None:
        return float(formula(args, kwargs or {}, out))
    if torch.Tag.pointwise in getattr(func, "tags", ()):
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return float(max((t.numel() for t in outputs), default=0))
    return 0.0


class FlopCounter(TorchDispatchMode):
    """Adds up :func:`op_flops` of every ATen op dispatched while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.flops += op_flops(func, args, kwargs or {}, out)
        return out
