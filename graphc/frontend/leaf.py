"""Marking modules that ``granularity="module"`` keeps as single cost-graph nodes.

By default the leaves are the modules of ``torch.nn`` itself (Conv2d, Linear, LSTM, LayerNorm, ...), as
placement papers count layers. A model's own block (an attention block, say) becomes a leaf when its
class is decorated with :func:`leaf_module`, or when it is passed in ``trace(..., leaf_modules=...)``.
"""

from __future__ import annotations

from typing import TypeVar

import torch.nn as nn

from graphc.ir.errors import ArgumentTypeError

_LEAF_FLAG = "__graphc_leaf__"
ModuleType = TypeVar("ModuleType", bound=type[nn.Module])


def leaf_module(cls: ModuleType) -> ModuleType:
    """Class decorator: trace every instance of ``cls`` as one node at module granularity."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ArgumentTypeError(f"leaf_module decorates nn.Module subclasses, got {cls!r}")
    setattr(cls, _LEAF_FLAG, True)
    return cls


def is_marked_leaf(cls: type) -> bool:
    """True when ``cls`` (or a base class) was decorated with :func:`leaf_module`."""
    return bool(getattr(cls, _LEAF_FLAG, False))


def is_torch_nn_leaf(cls: type) -> bool:
    """True for the modules of ``torch.nn`` other than containers (Sequential, ModuleList, ...)."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return cls.__module__.startswith("torch.nn") and not issubclass(cls, containers)
