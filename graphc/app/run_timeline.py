"""What ``graphc run`` measured, step by step, beside what the plan predicted: ``--trace`` writes both
timelines as one Trace Event document (Perfetto, chrome://tracing) and ``--gantt`` draws them as a PNG.

The measured timeline is the median timed step's (:attr:`runtime.measure.Measurement.timeline`): per
device, each unit of work the executor ran (``F3``: the forward of microbatch 3, its receives included;
``B3``; ``OPT``: the gradient collectives and sends still in flight, then the optimizer step; ``sync``:
the collectives and sends waited for at the end). The predicted one is the plan's simulation of the same
schedule (:meth:`placement.plan.Plan.simulate`), its per-node forwards and backwards gathered into the
same units (first start to last end of a microbatch's forward or backward on a device), so the two line
up unit by unit: where a measured bar is longer, or starts later, is where the model is wrong. (A
predicted unit leaves out the CPU time of the transfers it receives, which the simulator prices as
events of their own; the measured unit includes it.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from placement.inspect import chrome_trace
from placement.simulate import SimResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Trace Event process of the measured timeline (the predicted one's are 1 to 3, chrome_trace's).
MEASURED_PID = 10
#: Bar colours by the kind of unit, as the first letter of its name says, and the legend's words.
KIND_COLOURS = {"F": "#4c72b0", "B": "#dd8452", "O": "#8c8c8c", "s": "#8172b3"}
KIND_NAMES = {"F": "forward (F<microbatch>)", "B": "backward (B<microbatch>)", "O": "collectives and sends in flight, optimizer (OPT)",
              "s": "collectives and sends at the end (sync)"}  # fmt: skip
#: The narrowest bar, as a fraction of the step, that gets its unit's name written on it.
LABEL_FRACTION = 0.035


def predicted_units(sim: SimResult) -> dict[str, list[list[Any]]]:
    """device -> ``[unit, start_ms, end_ms]``: the simulated forwards and backwards of each microbatch
    on each device as the executor's units (module docstring), in start order."""
    spans: dict[tuple[str, str], list[float]] = {}
    for e in sim.timeline:
        if e.kind not in ("forward", "backward"):
            continue
        key = (e.device, f"{'F' if e.kind == 'forward' else 'B'}{e.microbatch}")
        span = spans.setdefault(key, [e.start_ms, e.end_ms])
        span[0], span[1] = min(span[0], e.start_ms), max(span[1], e.end_ms)
    units: dict[str, list[list[Any]]] = {}
    for (device, unit), (start, end) in sorted(spans.items(), key=lambda item: item[1][0]):
        units.setdefault(device, []).append([unit, start, end])
    return units


def timeline_trace(measured: dict[str, list[list[Any]]], predicted: SimResult | None) -> dict[str, Any]:
    """One Trace Event document: the prediction (:func:`placement.inspect.chrome_trace`, when there is
    one) and the measured units as process :data:`MEASURED_PID`, a thread per device."""
    doc = chrome_trace(predicted) if predicted is not None else {"traceEvents": [], "displayTimeUnit": "ms"}
    events = doc["traceEvents"]
    events.append({"ph": "M", "pid": MEASURED_PID, "name": "process_name", "args": {"name": "measured (graphc run)"}})
    for tid, (device, spans) in enumerate(measured.items()):
        events.append({"ph": "M", "pid": MEASURED_PID, "tid": tid, "name": "thread_name", "args": {"name": device}})
        events += [
            {"ph": "X", "pid": MEASURED_PID, "tid": tid, "ts": 1e3 * start, "dur": 1e3 * (end - start), "name": unit, "cat": "measured"}
            for unit, start, end in spans
        ]  # fmt: skip
    return doc


def write_trace(path: str | Path, measured: dict[str, list[list[Any]]], predicted: SimResult | None) -> None:
    Path(path).write_text(json.dumps(timeline_trace(measured, predicted)))


def timeline_figure(measured: dict[str, list[list[Any]]], predicted: dict[str, list[list[Any]]], title: str) -> Figure:
    """Per device, its predicted units above its measured ones, on one time axis (module docstring)."""
    # matplotlib loads on first use, as placement.inspect's charts do: only a picture needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    devices = list(dict.fromkeys([*predicted, *measured]))
    rows = [(d, "predicted", predicted.get(d, [])) for d in devices] + [(d, "measured", measured.get(d, [])) for d in devices]
    rows.sort(key=lambda row: (devices.index(row[0]), row[1] == "measured"))
    longest = max((end for _, _, spans in rows for _, _, end in spans), default=1.0)
    fig = Figure(figsize=(12, 0.9 + 0.45 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, (device, which, spans) in enumerate(rows):
        for unit, start, end in spans:
            ax.barh(y, end - start, left=start, height=0.7, color=KIND_COLOURS.get(unit[:1], "#999999"),
                    edgecolor="white", linewidth=0.8, alpha=0.5 if which == "predicted" else 1.0)  # fmt: skip
            if end - start >= LABEL_FRACTION * longest:
                ax.text((start + end) / 2, y, unit, ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(rows)), [f"{device} {which}" for device, which, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms from the start of the step")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    shown = {unit[:1] for _, _, spans in rows for unit, _, _ in spans}
    handles = [Patch(color=colour, label=KIND_NAMES[kind]) for kind, colour in KIND_COLOURS.items() if kind in shown]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


def write_gantt(path: str | Path, measured: dict[str, list[list[Any]]], predicted: dict[str, list[list[Any]]], title: str) -> None:
    timeline_figure(measured, predicted, title).savefig(path, dpi=110)
