"""Plain values in a file, written and read without pickle (graphc never unpickles).

A *plain value* is None, a bool, number or string, a tensor, or a list, tuple or dict of plain values
(dict keys plain too). What :func:`runtime.launch.spawn` hands a rank and gets back, and what a
checkpoint holds (:mod:`runtime.averaging.checkpoint`), is one. ``torch.save`` would pickle it and
``torch.load`` unpickle it (``weights_only=True`` only restricts the unpickler), so instead a file is:

* the bytes ``GRAPHCPV``, then the length of a JSON header as 8 bytes (little-endian);
* the header: the value as JSON in which every object is a one-key tag (``{"tuple": [...]}``,
  ``{"dict": [[key, value], ...]}``, ``{"tensor": {"dtype", "shape", "device", "offset", "nbytes"}}``;
  lists are JSON arrays, and floats that JSON cannot spell, NaN and the infinities, ``{"float": "nan"}``);
* every tensor's bytes, one after another, where its tag's ``offset`` says.

Reading builds nothing but those types; a file that is not one is refused, saying so.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch

from graphc.ir.errors import ConfigurationError, FormatError

MAGIC = b"GRAPHCPV"
_LENGTH = struct.Struct("<Q")


def save_plain(value: Any, path: str | Path) -> None:
    """Write the plain value ``value`` to ``path`` (module docstring); anything else is refused."""
    blobs: list[bytes] = []
    header = json.dumps(_encode(value, blobs, [0]), allow_nan=False).encode()
    with Path(path).open("wb") as out:
        out.write(MAGIC + _LENGTH.pack(len(header)) + header)
        out.writelines(blobs)


def load_plain(path: str | Path) -> Any:
    """The plain value in ``path`` (written by :func:`save_plain`)."""
    data = Path(path).read_bytes()
    start = len(MAGIC) + _LENGTH.size
    if data[: len(MAGIC)] != MAGIC or len(data) < start:
        raise FormatError(f"{path}: not a file of plain values (graphc's save_plain writes them)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    try:
        tree = json.loads(data[start : start + length])
    except ValueError as exc:
        raise FormatError(f"{path}: its header is not JSON: {exc}") from None
    return _decode(tree, memoryview(data)[start + length :], str(path))


def _encode(value: Any, blobs: list[bytes], offset: list[int]) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().contiguous()
        raw = tensor.cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        tag = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape), "device": str(tensor.device),
               "offset": offset[0], "nbytes": len(raw)}  # fmt: skip
        blobs.append(raw)
        offset[0] += len(raw)
        return {"tensor": tag}
    if isinstance(value, list):
        return [_encode(item, blobs, offset) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, blobs, offset) for item in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, blobs, offset), _encode(v, blobs, offset)] for k, v in value.items()]}
    raise ConfigurationError(f"save_plain: a {type(value).__qualname__} is not a plain value (None, bools, numbers, strings, tensors, lists, tuples, dicts)")


def _decode(tree: Any, data: memoryview, source: str) -> Any:
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, list):
        return [_decode(item, data, source) for item in tree]
    if not isinstance(tree, dict) or len(tree) != 1:
        raise FormatError(f"{source}: {str(tree)[:80]} is no tagged plain value")
    tag, body = next(iter(tree.items()))
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "tuple" and isinstance(body, list):
        return tuple(_decode(item, data, source) for item in body)
    if tag == "dict" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
        return {_decode(k, data, source): _decode(v, data, source) for k, v in body}
    if tag == "tensor" and isinstance(body, dict):
        return _tensor(body, data, source)
    raise FormatError(f"{source}: {str(tree)[:80]} is no tagged plain value")


def _tensor(tag: dict[str, Any], data: memoryview, source: str) -> torch.Tensor:
    dtype = getattr(torch, str(tag.get("dtype")), None)
    offset, nbytes, shape = tag.get("offset"), tag.get("nbytes"), tag.get("shape")
    if not isinstance(dtype, torch.dtype) or not isinstance(offset, int) or not isinstance(nbytes, int) or not isinstance(shape, list):
        raise FormatError(f"{source}: a tensor's tag {tag} names no dtype, shape, offset and length")
    if offset < 0 or offset + nbytes > len(data) or nbytes != math.prod(shape) * dtype.itemsize:
        raise FormatError(f"{source}: a tensor's bytes ({tag}) do not fit the file")
    raw = torch.frombuffer(bytearray(data[offset : offset + nbytes]), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    tensor = raw.view(dtype).reshape(shape)
    device = str(tag.get("device", "cpu"))
    return tensor.to(device) if device.startswith("cuda") and torch.cuda.is_available() else tensor

