"""A communication-aware lower bound on the span of one fork-join block, for one pass and one home device.

Setting (built by :mod:`placement.bounds.series`). A *block* is the set ``X`` of nodes strictly between two
nodes ``a`` and ``b`` that every other node of the graph is comparable with, so every node of ``X``
descends from ``a`` and precedes ``b``. In one pass (the forward, or the backward of training) the
block's tasks run after the *fork* task and before the *join* task: forward ``F(a) -> F(X) -> F(b)``,
backward ``B(b) -> B(X) -> B(a)``. The *window* is from the end of the fork to the start of the join; the
join runs on the *home* device ``h`` and the fork on ``h`` or on another device. The *span* is the window's
length. This module bounds it from below for every placement of ``X``, given the two ends' devices.

Relaxation. Every node of ``X`` is either on ``h`` (H) or not (O: on some other device, with its
fastest time there). For each of the ``2^|C|`` H/O patterns of each weakly connected component ``C`` of
``X`` the module computes, for every placement with that pattern, lower bounds on:

- *paths*: the longest path through ``C`` with O nodes at their fastest other device, an edge between H
  and O costing its cheapest transfer between ``h`` and another device (the fork's own device when it
  is known) and an edge between two O nodes nothing (they may share a device);
- *the home device*: the tasks on ``h`` all run in the window, one at a time, so the window is at least
  the earliest head of them + their total time + the least tail (the one-machine bound of Carlier,
  "The one-machine sequencing problem", EJOR 11, 1982), heads and tails being the pattern's path lengths
  to and from the task;
- *the other devices, pooled*: their busiest one carries at least the O work / (devices - 1), with the
  least head and tail of O tasks around it;
- *the home device's link*: when every route into ``h`` shares one link direction (the GPU's PCIe link
  in a PCIe box), the transfers into ``h`` in the window run one at a time on it (the simulator holds
  every link of a route for the whole transfer), so the window is at least the earliest of their
  starts + their total time; likewise out of ``h`` with the least time after their end. Transfers are
  counted per *producer* (a node's output is sent once per receiving device; its gradient comes back
  once per device): a producer on H with a consumer on O costs at least one transfer between ``h`` and
  another device, one on O with a consumer on H exactly one; each costs at least the cheapest of the
  producer's edges in that direction. The fork's output (or, backward, the gradient into ``a``) is
  shared by all components: it is counted once for the block.

All of these are necessary conditions on any timeline of the simulator (:mod:`placement.simulate`):
contention and the other tasks sharing the devices only delay things further. So the span is at least
the largest of them, and the bound of the block is the least, over the combinations of one pattern per
component, of that largest value.

Combining. The patterns of a component are summarised by a vector of numbers, each of which the bound
only grows with: sums (loads, transfer times), minima (heads, tails; infinite when the pattern has no such
task), a maximum (the path) and flags (the fork's transfer). Replacing a set of patterns by the
coordinate-wise minimum of their vectors can only lower the bound, so it stays valid; patterns are
grouped by which of the four one-machine terms they leave empty (so that an empty term is never mixed
with a present one) and then by load on ``h`` and transfer time, into at most :data:`CLUSTERS` groups.
Components are merged one at a time with the same reduction, so the work is linear in the number of
components. A component of more than :data:`MAX_COMPONENT` nodes is not enumerated: the block is then
not refined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# A component of more nodes is not enumerated (2^n patterns).
MAX_COMPONENT = 12
# Groups kept per emptiness signature when summarising patterns (a grid of loads x transfer times).
CLUSTERS = (8, 3)

INF = math.inf

# The vector of one pattern (or group of patterns): how each coordinate combines across components.
_SUM = ("load_h", "load_o", "in_sum", "out_sum")
_MIN = ("head_h", "tail_h", "head_o", "tail_o", "in_head", "out_tail")
_MAX = ("path",)
_FLAG = ("fork_in", "fork_out")
_FIELDS = _SUM + _MIN + _MAX + _FLAG


@dataclass
class Key:
    """A producer of the component (forward orientation) and what its transfers cost at least.

    ``consumers``: indices in the component of the nodes that consume its output. ``fixed``: the side of
    the consumer outside the component (``b``), True for H, False for O, None when it has none.
    ``lb_x``: the least transfer when it is on H and a consumer on O; ``lb_y``: when it is on O and a
    consumer on H (ms)."""

    node: int
    consumers: list[int]
    fixed: bool | None
    lb_x: float
    lb_y: float


@dataclass
class Component:
    """One weakly connected component of a block, seen in one pass with one home device.

    Node indices run in the pass's precedence order. ``arcs``: (i, j, delay if i on H and j on O, delay if
    i on O and j on H). ``entry``: (j, delay from the fork if j on H, if j on O); ``exit``: (i, delay to the
    join if i on O). ``fork_consumers``: the nodes consuming the fork node ``a`` (forward orientation)."""

    dur_h: np.ndarray
    dur_o: np.ndarray
    arcs: list[tuple[int, int, float, float]]
    entry: list[tuple[int, float, float]]
    exit: list[tuple[int, float]]
    keys: list[Key]
    fork_consumers: list[int] = field(default_factory=list)


@dataclass
class BlockPass:
    """A block in one pass: its components and the block-wide facts of the bound.

    ``forward``: the pass (transfers of a producer on H go out of ``h`` forward, into it backward).
    ``fork_home``: the fork's task runs on ``h``. ``lb_fork_in`` / ``lb_fork_out``: the least transfer of
    the fork's output (or gradient) into / out of ``h``. ``direct``: the delay of an edge ``a -> b`` when
    the ends are on different devices (it forces that transfer into ``h``), else None. ``shared_in`` /
    ``shared_out``: every route into / out of ``h`` shares a link. ``others``: devices other than ``h``."""

    components: list[Component]
    forward: bool
    fork_home: bool
    lb_fork_in: float
    lb_fork_out: float
    direct: float | None
    shared_in: bool
    shared_out: bool
    others: int


def block_span(block: BlockPass, cache: dict[tuple, dict[str, np.ndarray]] | None = None) -> float:
    """The least span of the block over every placement of its nodes (module docstring), ms.

    ``cache`` keeps the summarised patterns of components across calls (device pairs that look alike
    to a component give it the same inputs)."""
    merged: dict[str, np.ndarray] | None = None
    for comp in block.components:
        key = (component_key(comp), block.forward, block.fork_home)
        points = cache.get(key) if cache is not None else None
        if points is None:
            points = _reduce(_patterns(comp, block))
            if cache is not None:
                cache[key] = points
        merged = points if merged is None else _reduce(_merge(merged, points))
    if merged is None:
        return block.direct or 0.0
    return float(_objective(merged, block).min())


def component_key(c: Component) -> tuple:
    """Everything :func:`_patterns` reads of a component, as a hashable value."""
    keys = tuple((k.node, tuple(k.consumers), k.fixed, k.lb_x, k.lb_y) for k in c.keys)
    return (tuple(c.dur_h), tuple(c.dur_o), tuple(c.arcs), tuple(c.entry), tuple(c.exit), keys, tuple(c.fork_consumers))


def _patterns(comp: Component, block: BlockPass) -> dict[str, np.ndarray]:
    """The vector of every feasible H/O pattern of one component (rows), as columns by name."""
    n = len(comp.dur_h)
    codes = np.arange(1 << n, dtype=np.int64)
    on_h = ((codes[:, None] >> np.arange(n)) & 1).astype(bool)  # (P, n): True = on the home device
    dur = np.where(on_h, comp.dur_h, comp.dur_o)
    ok = np.isfinite(dur).all(axis=1)
    on_h, dur = on_h[ok], dur[ok]
    rows = len(on_h)
    zeros = np.zeros(rows)
    head = [zeros.copy() for _ in range(n)]
    for j, if_h, if_o in comp.entry:
        head[j] = np.maximum(head[j], np.where(on_h[:, j], if_h, if_o))
    tail = [zeros.copy() for _ in range(n)]
    for i, if_o in comp.exit:
        tail[i] = np.maximum(tail[i], np.where(on_h[:, i], 0.0, if_o))
    for i, j, ho, oh in comp.arcs:  # i < j: heads in precedence order
        delay = np.where(on_h[:, i] & ~on_h[:, j], ho, np.where(~on_h[:, i] & on_h[:, j], oh, 0.0))
        head[j] = np.maximum(head[j], head[i] + dur[:, i] + delay)
    for i, j, ho, oh in reversed(comp.arcs):
        delay = np.where(on_h[:, i] & ~on_h[:, j], ho, np.where(~on_h[:, i] & on_h[:, j], oh, 0.0))
        tail[i] = np.maximum(tail[i], tail[j] + dur[:, j] + delay)
    heads, tails = np.stack(head, axis=1), np.stack(tail, axis=1)
    out = {
        "load_h": np.where(on_h, dur, 0.0).sum(axis=1),
        "load_o": np.where(on_h, 0.0, dur).sum(axis=1),
        "head_h": np.where(on_h, heads, INF).min(axis=1),
        "tail_h": np.where(on_h, tails, INF).min(axis=1),
        "head_o": np.where(on_h, INF, heads).min(axis=1),
        "tail_o": np.where(on_h, INF, tails).min(axis=1),
        "path": (heads + dur + tails).max(axis=1),
    }
    in_sum, out_sum = zeros.copy(), zeros.copy()
    in_head, out_tail = np.full(rows, INF), np.full(rows, INF)
    reach_in = heads + dur  # in the pass's order: when a task's result may leave at the earliest
    reach_out = dur + tails  # how long after its input arrives a task still keeps the window open
    for key in comp.keys:
        u = key.node
        cons = key.consumers
        other = ~on_h[:, cons] if cons else np.zeros((rows, 0), dtype=bool)
        any_o = other.any(axis=1) | (key.fixed is False)
        any_h = (~other).any(axis=1) | (key.fixed is True)
        x = on_h[:, u] & any_o  # on H, a consumer on O
        y = ~on_h[:, u] & any_h  # on O, a consumer on H
        if block.forward:  # x leaves h; y enters it
            out_sum += np.where(x, key.lb_x, 0.0)
            out_tail = np.minimum(out_tail, np.where(x, _min_over(reach_out[:, cons], other), INF))
            in_sum += np.where(y, key.lb_y, 0.0)
            in_head = np.minimum(in_head, np.where(y, reach_in[:, u], INF))
        else:  # gradients: x enters h from the consumers' devices; y leaves h for the producer's
            in_sum += np.where(x, key.lb_x, 0.0)
            first = np.minimum(_min_over(reach_in[:, cons], other), 0.0 if key.fixed is False else INF)
            in_head = np.minimum(in_head, np.where(x, first, INF))
            out_sum += np.where(y, key.lb_y, 0.0)
            out_tail = np.minimum(out_tail, np.where(y, reach_out[:, u], INF))
    fork_in, fork_out = np.zeros(rows, dtype=bool), np.zeros(rows, dtype=bool)
    fc = comp.fork_consumers
    if fc:
        other = ~on_h[:, fc]
        if block.forward and block.fork_home:  # the fork's output leaves h
            fork_out = other.any(axis=1)
            out_tail = np.minimum(out_tail, np.where(fork_out, _min_over(reach_out[:, fc], other), INF))
        elif block.forward:  # the fork's output enters h from the fork's device, ready at once
            fork_in = (~other).any(axis=1)
            in_head = np.minimum(in_head, np.where(fork_in, 0.0, INF))
        else:  # backward: the join a is on h; gradients of its output come in from other devices
            fork_in = other.any(axis=1)
            in_head = np.minimum(in_head, np.where(fork_in, _min_over(reach_in[:, fc], other), INF))
    out.update(in_sum=in_sum, out_sum=out_sum, in_head=in_head, out_tail=out_tail, fork_in=fork_in, fork_out=fork_out)
    return out


def _min_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise minimum of ``values`` where ``mask`` holds (inf where it never does)."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], INF)
    return np.where(mask, values, INF).min(axis=1)


def _merge(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every pair of a row of ``a`` and a row of ``b``, combined coordinate by coordinate."""
    ia, ib = np.divmod(np.arange(len(a["path"]) * len(b["path"])), len(b["path"]))
    out = {}
    for name in _SUM:
        out[name] = a[name][ia] + b[name][ib]
    for name in _MIN:
        out[name] = np.minimum(a[name][ia], b[name][ib])
    for name in _MAX:
        out[name] = np.maximum(a[name][ia], b[name][ib])
    for name in _FLAG:
        out[name] = a[name][ia] | b[name][ib]
    return out


def _reduce(points: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """At most ``CLUSTERS`` groups per emptiness signature, each the coordinate-wise minimum of its rows."""
    rows = len(points["path"])
    k_load, k_xfer = CLUSTERS
    signature = sum(np.isfinite(points[name]).astype(np.int64) << s for s, name in enumerate(("head_h", "head_o", "in_head", "out_tail")))
    signature = signature * 4 + points["fork_in"] * 2 + points["fork_out"]
    load = np.argsort(np.argsort(points["load_h"], kind="stable"), kind="stable")
    xfer = np.argsort(np.argsort(points["in_sum"] + points["out_sum"], kind="stable"), kind="stable")
    group = np.zeros(rows, dtype=np.int64)
    for sig in np.unique(signature):
        members = np.flatnonzero(signature == sig)
        m = len(members)
        if m <= k_load * k_xfer:
            group[members] = np.arange(m)
            continue
        lr = np.argsort(np.argsort(load[members])) * k_load // m
        xr = np.argsort(np.argsort(xfer[members])) * k_xfer // m
        group[members] = lr * k_xfer + xr
    key = signature * (k_load * k_xfer + rows) + group
    uniq, inverse = np.unique(key, return_inverse=True)
    out = {}
    for name in _FIELDS:
        col = points[name]
        if col.dtype == bool:
            red = np.ones(len(uniq), dtype=bool)
            np.logical_and.at(red, inverse, col)
        else:
            red = np.full(len(uniq), INF)
            np.minimum.at(red, inverse, col)
        out[name] = red
    return out


def _objective(p: dict[str, np.ndarray], block: BlockPass) -> np.ndarray:
    """The span bound of each combined row: the largest of the terms of the module docstring."""

    def machine(head: np.ndarray, load: np.ndarray, tail: np.ndarray) -> np.ndarray:
        total = head + load + tail
        return np.where(np.isfinite(total), total, 0.0)

    terms = [p["path"], machine(p["head_h"], p["load_h"], p["tail_h"])]
    terms.append(machine(p["head_o"], p["load_o"] / max(1, block.others), p["tail_o"]))
    fork_in = p["fork_in"] | (block.direct is not None)
    in_head = np.where(block.direct is not None, np.minimum(p["in_head"], 0.0), p["in_head"])
    if block.shared_in:
        terms.append(machine(in_head, p["in_sum"] + np.where(fork_in, block.lb_fork_in, 0.0), np.zeros_like(in_head)))
    if block.shared_out:
        terms.append(machine(np.zeros_like(in_head), p["out_sum"] + np.where(p["fork_out"], block.lb_fork_out, 0.0), p["out_tail"]))
    if block.direct is not None:
        terms.append(np.full_like(in_head, block.direct))
    return np.maximum.reduce(terms)
