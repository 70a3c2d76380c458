"""graphc run --trace / --gantt: the median step's measured timeline beside the plan's prediction."""

from __future__ import annotations

import itertools
import json

import pytest

import graphc
from graphc import zoo
from graphc.app.run import cmd_run
from graphc.app.run_timeline import MEASURED_PID, predicted_units, timeline_trace
from graphc.ir.errors import ConfigurationError
from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, simulate
from runtime import contiguous_plan
from runtime.measure import aligned_timeline

from test_run import parse


def two_nodes() -> Graph:
    """a (forward 2 ms, backward 2 ms) -> b (4 ms, 4 ms), no bytes between them."""
    g = Graph("two")
    g.add_node(NodeData("a", "op", measured_ms={"cpu": 2.0}, measured_bwd_ms={"cpu": 2.0}))
    g.add_node(NodeData("b", "op", measured_ms={"cpu": 4.0}, measured_bwd_ms={"cpu": 4.0}))
    g.add_edge("a", "b", EdgeData(bytes=0.0))
    return g


def test_predicted_units_gather_a_microbatchs_nodes_on_a_device_by_hand():
    cluster = Cluster.preset("local", workers=2)
    one = simulate(two_nodes(), cluster, {"a": "cpu0", "b": "cpu0"})
    # a then b forward (0-2, 2-6), b then a backward (6-10, 10-12): one unit each way
    assert predicted_units(one) == {"cpu0": [["F0", 0.0, 6.0], ["B0", 6.0, 12.0]]}
    split = simulate(two_nodes(), cluster, {"a": "cpu0", "b": "cpu1"})
    units = predicted_units(split)
    assert [u[0] for u in units["cpu0"]] == ["F0", "B0"] and [u[0] for u in units["cpu1"]] == ["F0", "B0"]
    assert units["cpu0"][0][2] <= units["cpu1"][0][1]  # b's forward waits for a's
    assert units["cpu1"][1][2] <= units["cpu0"][1][1]  # a's backward waits for b's


def test_ranks_timelines_are_lined_up_on_the_earliest_start():
    ranks = [
        (1_000_000_000, {"cpu0": [["F0", 0.0, 3.0], ["OPT", 3.0, 4.0]]}),
        (1_002_500_000, {"cpu1": [["F0", 0.5, 1.5]]}),  # started 2.5 ms later
    ]
    assert aligned_timeline(ranks) == {"cpu0": [["F0", 0.0, 3.0], ["OPT", 3.0, 4.0]], "cpu1": [["F0", 3.0, 4.0]]}


def test_the_trace_holds_the_prediction_and_a_thread_per_measured_device():
    sim = simulate(two_nodes(), Cluster.preset("local", workers=2), {"a": "cpu0", "b": "cpu1"})
    doc = timeline_trace({"cpu0": [["F0", 0.0, 2.5]], "cpu1": [["F0", 2.5, 7.0]]}, sim)
    measured = [e for e in doc["traceEvents"] if e.get("pid") == MEASURED_PID and e["ph"] == "X"]
    assert [(e["name"], e["ts"], e["dur"]) for e in measured] == [("F0", 0.0, 2500.0), ("F0", 2500.0, 4500.0)]
    names = {e["args"]["name"] for e in doc["traceEvents"] if e.get("pid") == MEASURED_PID and e["name"] == "thread_name"}
    assert names == {"cpu0", "cpu1"}
    assert any(e.get("pid") == 1 and e["ph"] == "X" for e in doc["traceEvents"])  # the simulated devices


def test_trace_and_gantt_are_refused_for_a_run_without_a_schedule(tmp_path):
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    path = tmp_path / "data.json"
    contiguous_plan(program.graph, [["cpu0", "cpu1"]], microbatches=2).save(path)
    with pytest.raises(ConfigurationError, match="--trace and --gantt draw a scheduled step; --sync easgd"):
        cmd_run(parse("gpt2", "--plan", str(path), "--size", "small", "--sync", "easgd", "--trace", str(tmp_path / "t.json")))


@pytest.mark.distributed
def test_graphc_run_writes_the_median_steps_timeline_beside_the_prediction(tmp_path, capsys):
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    plan = contiguous_plan(program.graph, ["cpu0", "cpu1"], microbatches=2)
    plan.cluster = Cluster.preset("local", workers=2)
    plan.save(tmp_path / "pipe.json")
    trace, gantt, measured = tmp_path / "t.json", tmp_path / "g.png", tmp_path / "m.json"
    argv = ["gpt2", "--plan", str(tmp_path / "pipe.json"), "--size", "small", "--knob", "dropout=0.0", "--steps", "3", "--warmup", "1"]
    assert cmd_run(parse(*argv, "--trace", str(trace), "--gantt", str(gantt), "--json", str(measured))) == 0
    timeline = json.loads(measured.read_text())["timeline"]
    units = {d: [u for u, _, _ in spans] for d, spans in timeline.items()}
    assert units == {d: ["F0", "F1", "B0", "B1", "OPT", "sync"] for d in ("cpu0", "cpu1")}  # GPipe, as scheduled
    for spans in timeline.values():  # one after another on each rank
        assert all(a[2] <= b[1] + 1e-6 for a, b in itertools.pairwise(spans))
    spans = {d: {u: (s, e) for u, s, e in timeline[d]} for d in timeline}
    # the clocks line up: the second stage cannot finish a microbatch's forward before the first stage
    # began it, nor the first stage its backward before the second began it (it sends the gradient)
    for k in ("0", "1"):
        assert spans["cpu1"][f"F{k}"][1] >= spans["cpu0"][f"F{k}"][0]
        assert spans["cpu0"][f"B{k}"][1] >= spans["cpu1"][f"B{k}"][0]
    doc = json.loads(trace.read_text())
    measured_events = [e for e in doc["traceEvents"] if e.get("pid") == MEASURED_PID and e["ph"] == "X"]
    assert len(measured_events) == 12
    assert any(e.get("pid") == 1 and e["ph"] == "X" and e["cat"] == "forward" for e in doc["traceEvents"])
    assert gantt.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
