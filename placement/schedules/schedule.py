"""``Schedule``: every device's list of actions for one step, what it was made for, and its table."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

from placement.schedules.actions import Action

LEGEND = (
    "F3/B3: forward/backward of microbatch 3 (F(n)3: of node n); S(t->d)3/R(t<-d)3: send tensor t to / "
    "receive it from device d, microbatch 3 (t': the gradient of t); AR2: all-reduce of bucket 2 of a "
    "replicated stage's gradients (AR: of its only bucket); RD2/BC2: reduce of bucket 2 onto its parameter "
    "server / broadcast of its weights from the server; OPT: optimizer step"
)
WRAP_COLUMN = 14  # a device column is cut no narrower than this; more devices wrap into blocks
ELLIPSIS = "…"
# A code naming a node or tensor: "F(", the name, then ")3" or "'->gpu1)3" (a gradient's prime, the peer).
_NAMED = re.compile(r"(?P<head>[A-Z]+\()(?P<name>.*?)(?P<tail>'?(?:->|<-)[^)]*\)\d+|\)\d+)")


@dataclass
class Schedule:
    """Which actions every device runs in one step, in order.

    Attributes:
        name: how it was generated: ``"node-order"``, ``"gpipe"``, ``"1f1b"``, or a user's name.
        plan_kind: the objective of the plan it was made for (``"latency"`` or ``"throughput"``).
        microbatches: microbatches per step.
        actions: device -> its actions in order (each action's ``device`` is that device).
    """

    name: str
    plan_kind: str
    microbatches: int
    actions: dict[str, list[Action]] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.table()

    def table(self, width: int = 100) -> str:
        """One column per device and one row per step (the ``i``-th action of every device), under a
        title and above a legend, within ``width`` characters: a long node or tensor name is cut in its
        middle, and devices that do not fit side by side are printed in successive blocks."""
        devices = list(self.actions)
        codes = {d: [a.code() for a in self.actions[d]] for d in devices}
        steps = max((len(c) for c in codes.values()), default=0)
        step_width = max(len("step"), len(str(steps - 1)))
        natural = max([len(d) for d in devices] + [len(c) for cs in codes.values() for c in cs], default=0)
        fair = (width - step_width) // max(len(devices), 1) - 1
        column = min(natural, max(fair, WRAP_COLUMN), width - step_width - 1)
        per_block = max(1, (width - step_width) // (column + 1))
        title = (
            f"{self.name} schedule of a {self.plan_kind} plan: {self.microbatches} microbatch(es) "
            f"on {len(devices)} device(s)"
        )
        lines = [title]
        for first in range(0, len(devices), per_block):
            block = devices[first : first + per_block]
            lines.append(_row("step", block, column, step_width))
            for i in range(steps):
                cells = [codes[d][i] if i < len(codes[d]) else "" for d in block]
                lines.append(_row(str(i), cells, column, step_width))
        lines += textwrap.wrap(LEGEND, width)
        return "\n".join(lines)


def _row(first: str, cells: list[str], column: int, step_width: int) -> str:
    return " ".join([first.rjust(step_width)] + [_fit(c, column).ljust(column) for c in cells]).rstrip()


def _fit(text: str, column: int) -> str:
    """``text`` cut to ``column`` characters: the node or tensor name it holds is shortened in its middle,
    so that the peer and microbatch stay; failing that, the whole code is."""
    if len(text) <= column:
        return text
    named = _NAMED.fullmatch(text)
    if named:
        room = column - len(named["head"]) - len(named["tail"])
        if room > len(ELLIPSIS):
            return named["head"] + _cut(named["name"], room) + named["tail"]
    return _cut(text, column)


def _cut(text: str, width: int) -> str:
    """``text`` cut in its middle to ``width`` characters (its ends tell names apart)."""
    keep = width - len(ELLIPSIS)
    return text[: keep - keep // 2] + ELLIPSIS + text[len(text) - keep // 2 :]
