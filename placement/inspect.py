"""Looking into a plan: a summary table, a Chrome/Perfetto trace, a Gantt chart and a Graphviz picture.

Every view is computed from the plan, the graph it places and the cluster, by simulating the plan
again with the same cost model (:func:`placement.simulate`), so a saved plan file (which embeds its
graph and cluster) can be inspected on any machine.

* :func:`summary_table` — per device: ops, FLOPs, parameters, peak memory, busy time, utilisation;
  per link: bytes moved and busy time; per replicated stage (:func:`sync_table`): its replicas, their
  microbatches, how they synchronise (all-reduce algorithm and buckets, or the parameter servers and
  the bytes each holds) and what the synchronisation costs in the simulation; the predicted step time,
  lower bound, gap, synchronisation, solver and its time.
* :func:`chrome_trace` — the simulated timeline in the Trace Event format, one track per device, one
  per replica group (its collectives, one per bucket: all-reduce, or reduce, server update and
  broadcast) and one per link (a transfer or a collective's flow shows on every link it crosses);
  opens in Perfetto or ``chrome://tracing``.
* :func:`gantt_png` — the same timeline as a PNG (matplotlib; :func:`gantt_figure` gives the figure),
  with the same rows.

The synchronisation figures of a replicated stage are its collectives' simulated intervals
(:attr:`placement.timeline.RawTimeline.collectives`): ``sync ms`` is the length of their union (time
during which some bucket of the stage is being synchronised), ``exposed ms`` is how far the last one ends
after the stage's last backward, ``max(0, end of the last collective - end of the last backward)``: the
part the backward did not hide.
* :func:`to_dot` — the graph with nodes coloured by device and cut edges drawn bold red with their bytes.

Both pictures colour a device with :func:`device_colours`, so a device looks the same in each.
"""

from __future__ import annotations

import colorsys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table

from graphc.ir.graph import Graph
from placement.cluster import Cluster
from placement.sync import AllReduceSync, Sync, islands
from placement.timeline import (
    ALLREDUCE,
    BACKWARD,
    BROADCAST,
    FORWARD,
    REDUCE,
    SEND,
    SEND_GRAD,
    UPDATE,
    Collective,
    SimResult,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from placement.plan import Plan, Stage

_PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#2f4b7c", "#b6992d", "#d45087", "#1e6b3a", "#7a1f2b", "#6a3d9a", "#17becf",
]  # fmt: skip
TRANSFER_COLOUR = "#8c8c8c"  # neutral: a transfer occupies links, not a device
ALLREDUCE_COLOUR = "#4d4d4d"
SERVER_COLOUR = "#1a1a1a"  # a parameter server's optimizer update: compute, but on no device of the plan
COLLECTIVE_HATCH = {REDUCE: "\\\\\\\\", BROADCAST: "...."}  # reduce and broadcast: the all-reduce's grey, patterned
BACKWARD_HATCH = "////"
_DPI = 110
_LABEL_PT = 7  # font size of the names inside bars
_MIN_LABEL = 5  # fewer characters than this is no name: the bar stays blank
_OUTLINED_PX = 6  # bars at least this wide get a white outline that sets them apart from their neighbours


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f}"


def summary_table(plan: Plan, graph: Graph, cluster: Cluster, sim: SimResult) -> Group:
    """The plan for people: one table per device (a replica's row repeats its stage's ops, FLOPs and
    parameters; a parameter server's gives the parameters of its shards), one per link, one of the replicated stages (:func:`sync_table`) when there are some,
    and the headline figures. Units go
    under the column names, so that the device table of usual names and sizes is about 90 columns wide
    and fits a 100-column terminal without wrapping or cutting a figure."""
    devices = Table(title=f"plan for {graph.name!r} on {cluster.name!r} ({plan.objective}, {plan.mode})")
    for column in ("device", "kind", "ops", "fwd\nGFLOPs", "params\nMiB", "peak\nMiB", "capacity\nMiB", "busy\nms", "util"):
        devices.add_column(column, justify="left" if column in ("device", "kind") else "right")
    per_device: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for name, device in plan.assignment.items():
        node = graph.node(name)
        row = per_device[device]
        row[0] += 1
        row[1] += node.fwd_flops
        row[2] += node.param_bytes
    for st in _replicated(plan):  # each replica holds and runs what the plan assigns to the stage's first
        for d in st.devices[1:]:
            per_device[d] = list(per_device[st.devices[0]])
    for server, nbytes in _served_bytes(sim.raw.collectives).items():  # a server runs nothing, holds its shards
        per_device[server] = [0, 0.0, nbytes]
    util = sim.utilization()
    for device in cluster.devices:
        if device.name not in per_device:
            continue
        ops, flops, params = per_device[device.name]
        flag = " [red]OVER[/red]" if device.name in sim.over_capacity else ""
        devices.add_row(
            device.name, device.kind, str(int(ops)), f"{flops / 1e9:,.2f}", _mib(params),
            _mib(sim.peak_memory_bytes[device.name]) + flag, _mib(sim.memory_capacity_bytes[device.name]),
            f"{sim.busy_ms[device.name]:,.3f}", f"{util[device.name]:.0%}",
        )  # fmt: skip
    links = Table(title="links that carried data")
    for column in ("link", "MiB moved", "busy ms"):
        links.add_column(column, justify="left" if column == "link" else "right")
    for link, nbytes in sorted(sim.link_bytes.items(), key=lambda kv: -kv[1]):
        links.add_row(link, _mib(nbytes), f"{sim.link_busy_ms.get(link, 0.0):,.3f}")
    cut = [(s, d, e) for s, d, e in graph.edges() if plan.assignment[s] != plan.assignment[d]]
    headline = Table(show_header=False, title="prediction")
    headline.add_column("what", style="bold")
    headline.add_column("value", justify="right")
    gap = "unknown" if plan.gap is None else f"{plan.gap:.1%}"
    for what, value in (
        ("predicted step", f"{plan.predicted_step_ms:,.3f} ms ({plan.microbatches} microbatch(es))"),
        ("lower bound", f"{plan.lower_bound_ms:,.3f} ms (ratio {plan.ratio_to_bound():.3f})"),
        ("proven gap", gap),
        ("cut edges", f"{len(cut)} carrying {_mib(sum(e.bytes for _, _, e in cut))} MiB"),
        ("stages", str(len(plan.stages)) if plan.stages else "none (latency plan)"),
        *([("synchronisation", describe_sync(plan.sync))] if _replicated(plan) else []),
        ("solver", f"{plan.solver} in {plan.solve_seconds:.2f} s"),
    ):
        headline.add_row(what, value)
    tables = [devices] + ([links] if sim.link_bytes else [])
    tables += [sync_table(plan, cluster, sim)] if _replicated(plan) else []
    return Group(*tables, headline)


def _replicated(plan: Plan) -> list[Stage]:
    return [st for st in plan.stages if len(st.devices) > 1]


def describe_sync(sync: Sync) -> str:
    """How replicas synchronise under ``sync`` (a plan's), in words: ``ring all-reduce, 25.0 MiB buckets``
    or ``parameter servers cpu0, cpu1 (synchronous), 25.0 MiB buckets``."""
    size = "one bucket per stage" if sync.bucket_bytes is None else f"{_mib(sync.bucket_bytes)} MiB buckets"
    if isinstance(sync, AllReduceSync):
        return f"{sync.algorithm} all-reduce, {size}"
    timing = "synchronous" if sync.staleness == 0 else f"staleness {sync.staleness}"
    return f"parameter servers {', '.join(sync.servers)} ({timing}), {size}"


def sync_table(plan: Plan, cluster: Cluster, sim: SimResult) -> Table:
    """One row per replicated stage: its devices, microbatches per replica, how it synchronises (the
    algorithm, with a hierarchical all-reduce's islands, or the servers and the MiB each holds), its
    buckets and their MiB, and the simulated ``sync ms`` and ``exposed ms`` (module docstring)."""
    table = Table(title=f"replicas and synchronisation ({describe_sync(plan.sync)})")
    for column in ("stage", "devices", "microbatches\nper replica", "sync", "buckets", "MiB", "sync\nms", "exposed\nms"):
        table.add_column(column, justify="left" if column in ("devices", "sync") else "right")
    records = _stage_collectives(plan, sim.raw.collectives)
    backward_end = _last_backward_end(sim)
    for st in _replicated(plan):
        mine = records.get(st.index, [])
        buckets = {c.bucket: c.bytes for c in mine}
        row = [str(st.index), ", ".join(st.devices), _share(plan.microbatches, len(st.devices))]
        if not mine:
            none = "none (inference)" if sim.mode != "training" else "none (no parameters)"
            table.add_row(*row, none, "0", "0.0", "-", "-")
            continue
        end = max(c.end_ms for c in mine)
        exposed = max(0.0, end - max(backward_end.get(d, 0.0) for d in st.devices))
        table.add_row(
            *row, _sync_means(mine, cluster, st), str(len(buckets)), _mib(sum(buckets.values())),
            f"{_union_ms(mine):,.3f}", f"{exposed:,.3f}",
        )  # fmt: skip
    return table


def _share(microbatches: int, replicas: int) -> str:
    """Microbatches per replica under round robin: ``2``, or ``2-3`` when they do not divide evenly."""
    low, extra = divmod(microbatches, replicas)
    return str(low) if extra == 0 else f"{low}-{low + 1}"


def _stage_collectives(plan: Plan, collectives: list[Collective]) -> dict[int, list[Collective]]:
    """The simulated collectives by the index of the stage whose replicas take part."""
    stage_of = {frozenset(st.devices): st.index for st in plan.stages}
    out: dict[int, list[Collective]] = defaultdict(list)
    for c in collectives:
        index = stage_of.get(frozenset(d for d in c.devices if d != c.root))
        if index is not None:
            out[index].append(c)
    return out


def _sync_means(records: list[Collective], cluster: Cluster, stage: Stage) -> str:
    """``ring all-reduce``, ``hierarchical all-reduce: gpu0+gpu1 | gpu2+gpu3`` or ``servers cpu0 6.0 MiB,
    cpu1 4.0 MiB`` (the bytes of the buckets each server holds)."""
    served = _served_bytes(records)
    if served:
        return "servers " + ", ".join(f"{server} {_mib(nbytes)} MiB" for server, nbytes in served.items())
    algorithm = records[0].algorithm
    if algorithm != "hierarchical":
        return f"{algorithm} all-reduce"
    return "hierarchical all-reduce: " + " | ".join("+".join(i) for i in islands(cluster, stage.devices))


def _served_bytes(records: list[Collective]) -> dict[str, float]:
    """Parameter server -> the bytes of the buckets it holds (those reduced onto it), in first-use order."""
    served: dict[str, float] = {}
    for c in records:
        if c.kind == REDUCE:
            served[c.root] = served.get(c.root, 0.0) + c.bytes
    return served


def _union_ms(records: list[Collective]) -> float:
    """The length of the union of the records' intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted((c.start_ms, c.end_ms) for c in records):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _last_backward_end(sim: SimResult) -> dict[str, float]:
    """Device -> the end of its last backward in the simulated step."""
    ends: dict[str, float] = {}
    for e in sim.timeline:
        if e.kind == BACKWARD:
            ends[e.device] = max(ends.get(e.device, 0.0), e.end_ms)
    return ends


def chrome_trace(sim: SimResult) -> dict[str, Any]:
    """The simulated timeline as a Trace Event document: process 1 holds one thread per device, process
    2 one thread per link, process 3 one thread per replica group (per group and server under parameter
    servers) with its collectives, one event per bucket and kind (:func:`collective_code` names it);
    times in microseconds."""
    devices = list(sim.busy_ms)
    links = sorted({link for e in sim.timeline for link in e.links})
    groups = list(dict.fromkeys(_group_row(c) for c in sim.raw.collectives))
    tid = {("dev", d): i for i, d in enumerate(devices)} | {("link", lk): i for i, lk in enumerate(links)}
    tid |= {("group", g): i for i, g in enumerate(groups)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "links"}},
    ]
    events += [{"ph": "M", "pid": 1, "tid": tid["dev", d], "name": "thread_name", "args": {"name": d}} for d in devices]
    events += [{"ph": "M", "pid": 2, "tid": tid["link", lk], "name": "thread_name", "args": {"name": lk}} for lk in links]
    if groups:
        events.append({"ph": "M", "pid": 3, "name": "process_name", "args": {"name": "synchronisation"}})
        events += [{"ph": "M", "pid": 3, "tid": tid["group", g], "name": "thread_name", "args": {"name": g}} for g in groups]
    for c in sim.raw.collectives:
        args = {"algorithm": c.algorithm, "bucket": c.bucket, "bytes": c.bytes, "root": c.root, "devices": c.devices}
        events.append({"ph": "X", "ts": 1e3 * c.start_ms, "dur": 1e3 * (c.end_ms - c.start_ms), "cat": c.kind,
                       "pid": 3, "tid": tid["group", _group_row(c)], "name": collective_code(c), "args": args})  # fmt: skip
    for e in sim.timeline:
        common = {"ph": "X", "ts": 1e3 * e.start_ms, "dur": 1e3 * e.duration_ms, "cat": e.kind}
        args = {"microbatch": e.microbatch}
        if e.kind in (FORWARD, BACKWARD):
            events.append({**common, "pid": 1, "tid": tid["dev", e.device], "name": f"{e.name} ({e.kind})", "args": args})
            continue
        args |= {"bytes": e.bytes, "from": e.src_device, "to": e.device}
        for link in e.links:
            events.append({**common, "pid": 2, "tid": tid["link", link], "name": f"{e.kind} {e.name}", "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _group_row(c: Collective) -> str:
    """The row (trace thread, Gantt row) of a collective: ``sync``, its replicas joined by ``+``, and
    `` @ server`` under parameter servers (a row per server: the servers work at the same time)."""
    return "sync " + "+".join(d for d in c.devices if d != c.root) + (f" @ {c.root}" if c.root else "")


_CODES = {ALLREDUCE: "AR", REDUCE: "RD", UPDATE: "OPT", BROADCAST: "BC"}


def collective_code(c: Collective) -> str:
    """A collective's short name, as the schedule table writes its action: ``AR``, ``AR2`` (bucket 2 of
    several), ``RD2@cpu0``, ``OPT2@cpu0`` (the server's update), ``BC2@cpu0``."""
    bucket = str(c.bucket) if c.buckets > 1 else ""
    return _CODES.get(c.kind, c.kind) + bucket + (f"@{c.root}" if c.root else "")


def device_colours(devices: Sequence[str]) -> dict[str, str]:
    """One fill colour per device, by its position in the cluster's device list (``devices``).

    The Gantt chart and the Graphviz picture both colour by this function, so a device has the same
    colour in both pictures, and in the pictures of every plan on the same cluster. The first 16 colours
    are hand-picked to be told apart; further devices get hues spread by the golden ratio. No colour is
    grey: grey is kept for transfers, which belong to links rather than to a device.
    """
    return {name: _nth_colour(i) for i, name in enumerate(devices)}


def _nth_colour(i: int) -> str:
    if i < len(_PALETTE):
        return _PALETTE[i]
    return _hex(*colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.6, 0.8))


def _hex(r: float, g: float, b: float) -> str:
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _rgb(colour: str) -> tuple[float, float, float]:
    return int(colour[1:3], 16) / 255, int(colour[3:5], 16) / 255, int(colour[5:7], 16) / 255


def _lighter(colour: str, amount: float = 0.55) -> str:
    """``colour`` blended towards white by ``amount`` (0 keeps it, 1 gives white)."""
    r, g, b = (c + (1 - c) * amount for c in _rgb(colour))
    return _hex(r, g, b)


def _ink(fill: str) -> str:
    """Black or white, whichever reads better on ``fill`` (by its perceived luminance)."""
    r, g, b = _rgb(fill)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


@dataclass(frozen=True)
class _Style:
    """How one kind of bar is drawn: fill, hatch (backward passes and gradients) and hatch colour."""

    fill: str
    hatch: str | None
    stripes: str


def _style(kind: str, colour: str) -> _Style:
    """A device's forward and backward passes in its colour (backward lighter and hatched); transfers in
    grey (gradient sends lighter and hatched, like the backward pass they serve), all-reduces dark grey,
    reduces and broadcasts dark grey with white stripes or dots, a server's update near black."""
    if kind == FORWARD:
        return _Style(colour, None, colour)
    if kind == BACKWARD:
        return _Style(_lighter(colour), BACKWARD_HATCH, colour)
    if kind == SEND_GRAD:
        return _Style(_lighter(TRANSFER_COLOUR), BACKWARD_HATCH, TRANSFER_COLOUR)
    if kind == UPDATE:
        return _Style(SERVER_COLOUR, None, SERVER_COLOUR)
    if kind in COLLECTIVE_HATCH:
        return _Style(ALLREDUCE_COLOUR, COLLECTIVE_HATCH[kind], "white")
    return _Style(ALLREDUCE_COLOUR if kind == ALLREDUCE else TRANSFER_COLOUR, None, TRANSFER_COLOUR)


def _fit_label(name: str, room: int) -> str | None:
    """``name`` in at most ``room`` characters, or None when fewer than :data:`_MIN_LABEL` fit.

    A cut name keeps its end behind an ellipsis: module paths such as ``Mixed_6b.branch7x7dbl_5.conv``
    end in the part that tells the ops of one block apart (``…dbl_5.conv``)."""
    if len(name) <= room:
        return name
    return f"…{name[1 - room :]}" if room >= _MIN_LABEL else None


def _timeline_bars(sim: SimResult) -> tuple[list[str], dict[tuple[str, str], list[tuple[float, float, str]]]]:
    """The chart's rows (devices that computed, in cluster order, then one per replica group, then links
    that carried data) and its bars: (start, duration, name) per (row, kind); a transfer or a
    collective's flow shows on every link it crosses (unnamed), and the collective once on its group's row."""
    bars: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for e in sim.timeline:
        name = "" if e.kind in _CODES else e.name  # a collective is named once, on its group's row
        for row in [e.device] if e.kind in (FORWARD, BACKWARD) else e.links:
            bars[row, e.kind].append((e.start_ms, e.duration_ms, name))
    for c in sim.raw.collectives:
        bars[_group_row(c), c.kind].append((c.start_ms, c.end_ms - c.start_ms, collective_code(c)))
    computing = {row for row, kind in bars if kind in (FORWARD, BACKWARD)}
    groups = list(dict.fromkeys(_group_row(c) for c in sim.raw.collectives))
    links = sorted({row for row, _ in bars} - computing - set(groups))
    return [d for d in sim.busy_ms if d in computing] + groups + links, bars


def gantt_figure(sim: SimResult, title: str = "") -> Figure:
    """The simulated timeline as a matplotlib figure (see :func:`gantt_png`), for tests and notebooks."""
    rows, bars = _timeline_bars(sim)
    colours = device_colours(list(sim.busy_ms))
    devices = [r for r in rows if r in colours]
    fig, ax = _gantt_frame(sim, rows, len(devices), title)
    fig.legend(handles=_legend_handles(devices, colours, {kind for _, kind in bars}), loc="outside right upper", fontsize=8)
    fig.draw_without_rendering()  # lays the axes out: from here on a millisecond's width in pixels is known
    x0, x1 = ax.get_xlim()
    px_per_ms = ax.get_window_extent().width / (x1 - x0)
    char_px = _char_px(fig)
    for (row, kind), spans in bars.items():
        style = _style(kind, colours.get(row, TRANSFER_COLOUR))
        _draw_bars(ax, rows.index(row), spans, style, px_per_ms, char_px, f"{row} {kind}")
    return fig


def _gantt_frame(sim: SimResult, rows: list[str], devices: int, title: str) -> tuple[Figure, Any]:
    """The empty chart: a row per device then per link (a line between the two groups), time in ms
    across with a light grid, and a title giving the predicted step time."""
    # matplotlib loads on first use, on purpose: only a chart needs it, and it costs about a second to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(2.8, 0.42 * len(rows) + 1.6, 0.2 * (devices + 8) + 1.2)  # the legend has devices + up to 8 entries
    fig = Figure(figsize=(14, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (:func:`_char_px`)
    ax = fig.add_subplot()
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, sim.step_ms or 1.0)
    ax.set_xlabel("time since the step began (ms)")
    if len(rows) > devices:
        ax.axhline(devices - 0.5, color="black", linewidth=0.6)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    batches = "1 microbatch" if sim.microbatches == 1 else f"{sim.microbatches} microbatches"
    step = f"predicted {sim.mode} step: {sim.step_ms:,.3f} ms ({batches}, simulated)"
    ax.set_title(f"{title}\n{step}" if title else step)
    return fig, ax


def _legend_handles(devices: list[str], colours: dict[str, str], kinds: set[str]) -> list[Any]:
    """One swatch per device drawn, then what the fill, the hatch and the greys mean."""
    # matplotlib loads on first use, on purpose: only a chart needs it, and it costs about a second to import
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[d], label=d) for d in devices]
    handles += [
        Patch(facecolor="white", edgecolor="black", label="forward: solid"),
        Patch(facecolor="white", edgecolor="black", hatch=BACKWARD_HATCH, label="backward: light, hatched"),
    ]
    for kind, label in (
        (SEND, "activation transfer"), (SEND_GRAD, "gradient transfer"), (ALLREDUCE, "all-reduce"),
        (REDUCE, "reduce onto a server"), (UPDATE, "server's optimizer update"), (BROADCAST, "server's broadcast"),
    ):  # fmt: skip
        if kind in kinds:
            s = _style(kind, TRANSFER_COLOUR)
            handles.append(Patch(facecolor=s.fill, hatch=s.hatch, edgecolor=s.stripes, label=label))
    return handles


def _draw_bars(ax: Any, y: int, spans: list[tuple[float, float, str]], style: _Style, px_per_ms: float, char_px: float,
               gid: str) -> None:  # fmt: skip
    """One row's bars of one kind, as one collection (``gid`` names it).

    Narrow bars (under :data:`_OUTLINED_PX`) that touch are drawn as one: the rasteriser would otherwise
    fill and hatch thousands of sub-pixel polygons over the same pixels. Every bar is at least a pixel
    wide, so a short transfer still shows. Wide bars get an outline that sets them apart from their
    neighbours (white; in the stripes' colour for hatched bars, since matplotlib before 3.10 draws a
    hatch in the edge colour) and, where it fits with a few pixels to spare, their name
    (:func:`_fit_label`)."""
    shown = _merge_narrow(spans, px_per_ms)
    widths = [(end - start) * px_per_ms for start, end, _ in shown]
    ax.broken_barh([(start, max(end - start, 1 / px_per_ms)) for start, end, _ in shown], (y - 0.4, 0.8),
                   facecolors=style.fill, hatch=style.hatch, edgecolor="white" if style.hatch is None else style.stripes,
                   linewidths=[0.5 if w >= _OUTLINED_PX else 0.0 for w in widths], gid=gid)  # fmt: skip
    for (start, end, name), width in zip(shown, widths):
        text = _fit_label(name, int((width - 8) / char_px))
        if text:
            ax.text((start + end) / 2, y, text, ha="center", va="center", fontsize=_LABEL_PT, color=_ink(style.fill),
                    clip_on=True, in_layout=False)  # fmt: skip


def _char_px(fig: Figure) -> float:
    """The mean width in pixels of a character of the bars' names, measured on the figure's renderer
    over letters, digits and the punctuation of node names."""
    # matplotlib loads on first use, on purpose: only a chart needs it, and it costs about a second to import
    from matplotlib.font_manager import FontProperties

    sample = "abcdefghijklmnopqrstuvwxyz_0123456789.ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    width, _, _ = fig.canvas.get_renderer().get_text_width_height_descent(sample, FontProperties(size=_LABEL_PT), False)
    return width / len(sample)


def _merge_narrow(spans: list[tuple[float, float, str]], px_per_ms: float) -> list[tuple[float, float, str]]:
    """(start, end, name) of the bars to draw: ``spans`` (start, duration, name) in time order, with runs
    of narrow bars less than half a pixel apart merged into one nameless bar."""
    shown: list[tuple[float, float, str]] = []
    for start, dur, name in sorted(spans):
        narrow = dur * px_per_ms < _OUTLINED_PX
        if narrow and shown and not shown[-1][2] and (start - shown[-1][1]) * px_per_ms < 0.5:
            shown[-1] = (shown[-1][0], max(shown[-1][1], start + dur), "")
        else:
            shown.append((start, start + dur, "" if narrow else name))
    return shown


def gantt_png(sim: SimResult, path: str | Path, title: str = "") -> None:
    """Draw the timeline as a PNG: one row per device, per replica group and per link, time in ms across.

    Bars are coloured by device (:func:`device_colours`, the Graphviz picture's colours), the backward
    pass lighter and hatched, transfers grey on the links they cross, a replica group's collectives dark
    on its row (:func:`collective_code` names them) and on their links; names are written inside the bars
    wide enough for them; the legend says all this; the title gives the predicted (simulated) step
    time. Bars are drawn as one collection per row and kind, so plans of thousands of nodes draw in
    about a second."""
    gantt_figure(sim, title).savefig(path)


def to_dot(plan: Plan, graph: Graph, cluster: Cluster) -> str:
    """Graphviz source of the graph, nodes filled with their device's colour (:func:`device_colours`,
    as in the Gantt chart), a legend note per device used, cut edges bold and red with their MiB."""
    used = set(plan.devices_used())
    colour = {d: c for d, c in device_colours([d.name for d in cluster.devices]).items() if d in used}
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [shape=box, style=filled, fontname="Helvetica"];']
    for device, c in colour.items():
        lines.append(f'  "legend {device}" [label="{device}", fillcolor="{c}", fontcolor={_ink(c)}, shape=note];')
    for node in graph.nodes():
        device = plan.assignment[node.name]
        label = f"{node.name}\\n{node.op.split('(')[0][:32]}"
        c = colour[device]
        lines.append(f'  "{node.name}" [label="{label}", fillcolor="{c}", fontcolor={_ink(c)}, tooltip="{device}"];')
    for src, dst, edge in graph.edges():
        if plan.assignment[src] != plan.assignment[dst]:
            lines.append(f'  "{src}" -> "{dst}" [color=red, penwidth=2.5, label="{edge.bytes / 2**20:.2f} MiB"];')
        else:
            lines.append(f'  "{src}" -> "{dst}";')
    lines.append("}")
    return "\n".join(lines)
