"""placement.schedules: schedules generated from tiny hand-built plans, their exact actions, the same
compute order as the runtime's pipeline schedules, and refusal of corrupt schedules."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

from graphc import Graph, NodeData
from placement import Plan, PlacementError
from placement.plan import Stage
from placement.schedules import (
    AllReduce,
    Backward,
    Compute,
    Forward,
    OptimizerStep,
    Recv,
    Schedule,
    ScheduleError,
    Send,
    make_schedule,
    validate,
)


def graph(nodes: str, edges: list[str], params: dict[str, float] | None = None) -> Graph:
    """Nodes named by single letters (``x`` is the graph input); edges as two-letter strings; ``params``:
    node -> its parameter bytes (default none)."""
    g = Graph("g")
    for n in nodes:
        g.add_node(NodeData(n, "input" if n == "x" else "op", param_bytes=(params or {}).get(n, 0.0)))
    for u, v in edges:
        g.add_edge(u, v)
    return g


def plan(g: Graph, assignment: dict[str, str], *, stages: list[Stage] = (), microbatches: int = 1,
         mode: str = "training", order: dict[str, list[str]] | None = None) -> Plan:  # fmt: skip
    return Plan(
        g.name, g.fingerprint(), "test", "throughput" if stages else "latency", mode, assignment,
        order=order or {}, stages=list(stages), microbatches=microbatches, graph=g,
    )  # fmt: skip


def pipeline(groups: list[list[str]], microbatches: int, mode: str = "training", params: float = 0.0) -> Plan:
    """A chain ``x -> a -> b -> ...``, node ``i`` of the chain alone in stage ``i`` (``x`` with ``a``),
    stage ``i`` on the devices ``groups[i]``; each node of the chain holds ``params`` parameter bytes."""
    names = "abcdefgh"[: len(groups)]
    g = graph("x" + names, ["x" + names[0]] + [u + v for u, v in zip(names, names[1:])], dict.fromkeys(names, params))
    stages = [Stage(i, (["x"] if i == 0 else []) + [n], devs) for i, (n, devs) in enumerate(zip(names, groups))]
    assignment = {n: st.devices[0] for st in stages for n in st.nodes}
    return plan(g, assignment, stages=stages, microbatches=microbatches, mode=mode)


def codes(schedule: Schedule) -> dict[str, str]:
    return {d: " ".join(a.code() for a in acts) for d, acts in schedule.actions.items()}


def compute_codes(schedule: Schedule) -> dict[str, str]:
    """Each device's forwards, backwards and all-reduces: what the executors run (runtime.schedule.device_work)."""
    return {
        d: " ".join(a.code() for a in acts if isinstance(a, (Compute, AllReduce)))
        for d, acts in schedule.actions.items()
    }


GPUS = [[f"gpu{i}"] for i in range(8)]


# -- pipelines ------------------------------------------------------------------------------------
def test_gpipe_on_two_stages_exact_actions():
    schedule = make_schedule(pipeline(GPUS[:2], 2), "gpipe")
    assert (schedule.name, schedule.plan_kind, schedule.microbatches) == ("gpipe", "throughput", 2)
    assert codes(schedule) == {
        "gpu0": "F0 S(a->gpu1)0 F1 S(a->gpu1)1 R(a'<-gpu1)0 B0 R(a'<-gpu1)1 B1 OPT",
        "gpu1": "R(a<-gpu0)0 F0 R(a<-gpu0)1 F1 B0 S(a'->gpu0)0 B1 S(a'->gpu0)1 OPT",
    }
    assert schedule.actions["gpu0"][:2] == [Forward("gpu0", 0, stage=0), Send("gpu0", "gpu1", "a", 0)]
    assert schedule.actions["gpu1"][4:6] == [Backward("gpu1", 0, stage=1), Send("gpu1", "gpu0", "a", 0, gradient=True)]


def test_one_f_one_b_on_two_stages_exact_actions():
    schedule = make_schedule(pipeline(GPUS[:2], 4), "1f1b")
    assert codes(schedule) == {
        "gpu0": "F0 S(a->gpu1)0 F1 S(a->gpu1)1 R(a'<-gpu1)0 B0 F2 S(a->gpu1)2 R(a'<-gpu1)1 B1 "
        "F3 S(a->gpu1)3 R(a'<-gpu1)2 B2 R(a'<-gpu1)3 B3 OPT",
        "gpu1": "R(a<-gpu0)0 F0 B0 S(a'->gpu0)0 R(a<-gpu0)1 F1 B1 S(a'->gpu0)1 "
        "R(a<-gpu0)2 F2 B2 S(a'->gpu0)2 R(a<-gpu0)3 F3 B3 S(a'->gpu0)3 OPT",
    }


def test_one_f_one_b_on_four_stages_and_eight_microbatches_compute_order():
    assert compute_codes(make_schedule(pipeline(GPUS[:4], 8), "1f1b")) == {
        "gpu0": "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7",
        "gpu1": "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7",
        "gpu2": "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7",
        "gpu3": "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7",
    }


def in_flight(actions) -> int:
    """The most microbatches whose forward ran and backward did not yet, along one device's list."""
    live = most = 0
    for a in actions:
        live += isinstance(a, Forward) - isinstance(a, Backward)
        most = max(most, live)
    return most


@pytest.mark.parametrize("stages", [2, 4])
@pytest.mark.parametrize("microbatches", [4, 8])
def test_one_f_one_b_bounds_the_microbatches_in_flight_and_gpipe_keeps_all(stages, microbatches):
    one_f_one_b = make_schedule(pipeline(GPUS[:stages], microbatches), "1f1b")
    gpipe = make_schedule(pipeline(GPUS[:stages], microbatches), "gpipe")
    for s in range(stages):
        assert in_flight(one_f_one_b.actions[f"gpu{s}"]) == stages - s
        assert in_flight(gpipe.actions[f"gpu{s}"]) == microbatches


def test_a_replicated_stage_runs_microbatches_round_robin_then_all_reduces():
    schedule = make_schedule(pipeline([["gpu0", "gpu1"], ["gpu2"]], 4, params=8.0), "1f1b")
    # the stage's 1F1B order F0 F1 B0 F2 B1 F3 B2 B3, restricted to each replica's microbatches
    assert compute_codes(schedule) == {
        "gpu0": "F0 B0 F2 B2 AR",
        "gpu1": "F1 B1 F3 B3 AR",
        "gpu2": "F0 B0 F1 B1 F2 B2 F3 B3",
    }
    assert schedule.actions["gpu0"][-2:] == [
        AllReduce("gpu0", ("gpu0", "gpu1"), "stage 0 bucket 0", ("a",)),
        OptimizerStep("gpu0"),
    ]
    receives = [a for a in schedule.actions["gpu2"] if isinstance(a, Recv) and not a.gradient]
    assert [(a.peer, a.microbatch) for a in receives] == [("gpu0", 0), ("gpu1", 1), ("gpu0", 2), ("gpu1", 3)]


def test_inference_runs_forwards_only():
    schedule = make_schedule(pipeline(GPUS[:2], 2, mode="inference"), "1f1b")
    assert codes(schedule) == {"gpu0": "F0 S(a->gpu1)0 F1 S(a->gpu1)1", "gpu1": "R(a<-gpu0)0 F0 R(a<-gpu0)1 F1"}


def test_a_tensor_skipping_a_stage_goes_straight_to_its_consumer():
    g = graph("xabc", ["xa", "ab", "bc", "ac"])
    stages = [Stage(0, ["x", "a"], ["gpu0"]), Stage(1, ["b"], ["gpu1"]), Stage(2, ["c"], ["gpu2"])]
    p = plan(g, {"x": "gpu0", "a": "gpu0", "b": "gpu1", "c": "gpu2"}, stages=stages, microbatches=1)
    assert codes(make_schedule(p, "gpipe"))["gpu0"] == "F0 S(a->gpu1)0 S(a->gpu2)0 R(a'<-gpu1)0 R(a'<-gpu2)0 B0 OPT"


def test_stages_whose_data_flows_backwards_are_refused():
    g = graph("xab", ["xb", "ba"])
    stages = [Stage(0, ["a"], ["gpu0"]), Stage(1, ["x", "b"], ["gpu1"])]
    p = plan(g, {"x": "gpu1", "a": "gpu0", "b": "gpu1"}, stages=stages, microbatches=2)
    with pytest.raises(ScheduleError, match="node 'b' of stage 1 feeds 'a' of the earlier stage 0"):
        make_schedule(p, "1f1b")


@functools.cache
def traced_mlp(microbatches: int):
    """Eight linear layers: the graph of a batch of 8, the program of one microbatch of it."""
    import torch

    import graphc

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(8)])
    full = graphc.trace(model, (torch.randn(8, 4),), name="mlp", granularity="op")
    micro = graphc.trace(model, (torch.randn(8 // microbatches, 4),), name="mlp", granularity="op")
    return full.graph, micro.graph_module


SHAPES = {
    "2 stages": ["cpu0", "cpu1"],
    "3 stages": ["cpu0", "cpu1", "cpu2"],
    "4 stages": ["cpu0", "cpu1", "cpu2", "cpu3"],
    "first replicated": [["cpu0", "cpu1"], "cpu2"],
    "middle replicated": ["cpu0", ["cpu1", "cpu2", "cpu3"], "cpu4"],
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("microbatches", [4, 8])
@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_the_executors_run_the_compute_order_of_these_schedules(shape, microbatches, name):
    """The executors run these schedules: runtime.schedule.device_work accepts them for the partitioned
    program (its real messages, in order) and keeps, on each device, the same forwards, backwards and
    all-reduces in the same order."""
    import runtime
    from runtime.schedule import device_work

    full, micro = traced_mlp(microbatches)
    p = runtime.contiguous_plan(full, SHAPES[shape], microbatches=microbatches)
    ours = make_schedule(p, name)
    assigned = device_work(ours, runtime.partition(micro, p, full), in_order=True)
    assert compute_codes(ours) == {d: " ".join(str(w) for w in work if w.kind != "OPT") for d, work in assigned.work.items()}


# -- latency plans --------------------------------------------------------------------------------
def test_a_latency_plan_with_a_cut_edge_each_way_gets_matched_messages():
    """a on gpu0 feeds b on gpu1, which feeds c back on gpu0; gradients flow the other way."""
    g = graph("xabc", ["xa", "ab", "bc"])
    schedule = make_schedule(plan(g, {"x": "gpu0", "a": "gpu0", "b": "gpu1", "c": "gpu0"}))
    assert (schedule.name, schedule.plan_kind) == ("node-order", "latency")
    assert codes(schedule) == {
        "gpu0": "F(x)0 F(a)0 S(a->gpu1)0 R(b<-gpu1)0 F(c)0 B(c)0 S(b'->gpu1)0 R(a'<-gpu1)0 B(a)0 OPT",
        "gpu1": "R(a<-gpu0)0 F(b)0 S(b->gpu0)0 R(b'<-gpu0)0 B(b)0 S(a'->gpu0)0 OPT",
    }
    sends = {a.key for acts in schedule.actions.values() for a in acts if isinstance(a, Send)}
    recvs = {a.key for acts in schedule.actions.values() for a in acts if isinstance(a, Recv)}
    assert sends == recvs == {
        ("gpu0", "gpu1", "a", 0, False), ("gpu1", "gpu0", "b", 0, False),
        ("gpu0", "gpu1", "b", 0, True), ("gpu1", "gpu0", "a", 0, True),
    }  # fmt: skip


def test_a_tensor_is_sent_once_to_a_device_and_its_gradient_returns_after_its_last_consumer():
    g = graph("xabc", ["xa", "ab", "ac"])
    schedule = make_schedule(plan(g, {"x": "gpu0", "a": "gpu0", "b": "gpu1", "c": "gpu1"}, microbatches=2))
    assert codes(schedule)["gpu1"] == (
        "R(a<-gpu0)0 F(b)0 F(c)0 R(a<-gpu0)1 F(b)1 F(c)1 "
        "B(c)0 B(b)0 S(a'->gpu0)0 B(c)1 B(b)1 S(a'->gpu0)1 OPT"
    )


def test_the_plans_node_order_is_followed_and_a_contradicting_one_refused():
    g = graph("xabc", ["xa", "xb", "ac", "bc"])
    on_one = dict.fromkeys("xabc", "gpu0")
    ordered = make_schedule(plan(g, on_one, order={"gpu0": ["x", "b", "a", "c"]}), graph=g)
    assert codes(ordered)["gpu0"] == "F(x)0 F(b)0 F(a)0 F(c)0 B(c)0 B(a)0 B(b)0 OPT"
    with pytest.raises(ScheduleError, match=r"plan.order\['gpu0'\] runs 'c' before 'a', which feeds it"):
        make_schedule(plan(g, on_one, order={"gpu0": ["x", "c", "a", "b"]}))
    with pytest.raises(ScheduleError, match=r"missing \['c'\]"):
        make_schedule(plan(g, on_one, order={"gpu0": ["x", "a", "b"]}))


def test_an_order_that_contradicts_the_data_across_devices_deadlocks():
    """gpu0 runs c (which needs b from gpu1) before a (which b needs)."""
    g = graph("xabc", ["xa", "ab", "bc"])
    p = plan(g, {"x": "gpu0", "a": "gpu0", "b": "gpu1", "c": "gpu0"}, order={"gpu0": ["x", "c", "a"]})
    with pytest.raises(ScheduleError, match=r"cycle of waits: gpu0 -> gpu1 -> gpu0"):
        make_schedule(p)


def test_a_graph_with_explicit_backward_nodes_runs_each_node_once_as_given():
    """dnn-partitioning training graphs: a and b forward, gb and ga their backward nodes."""
    g = graph("xab", ["xa", "ab"])
    for name in ("gb", "ga"):
        g.add_node(NodeData(name, "op", is_backward=True))
    for u, v in (("b", "gb"), ("gb", "ga"), ("a", "ga")):
        g.add_edge(u, v)
    assignment = {"x": "gpu0", "a": "gpu0", "ga": "gpu0", "b": "gpu1", "gb": "gpu1"}
    assert codes(make_schedule(plan(g, assignment))) == {
        "gpu0": "F(x)0 F(a)0 S(a->gpu1)0 R(gb'<-gpu1)0 B(ga)0 OPT",
        "gpu1": "R(a<-gpu0)0 F(b)0 B(gb)0 S(gb'->gpu0)0 OPT",
    }
    assert codes(make_schedule(plan(g, assignment, mode="inference"))) == {
        "gpu0": "F(x)0 F(a)0 S(a->gpu1)0",
        "gpu1": "R(a<-gpu0)0 F(b)0",
    }


def test_a_lowering_gives_the_same_schedules_and_one_of_another_step_is_refused():
    """make_schedule(lowered=) reads the lowering's nodes and inputs: the same schedules as without; a
    device's default order is the lowering's topological order (b before a: inserted first)."""
    from placement import Cluster, CostModel, lower

    g = Graph("g")
    for n in "xbac":
        g.add_node(NodeData(n, "input" if n == "x" else "op"))
    for u, v in ("xa", "xb", "ac", "bc"):
        g.add_edge(u, v)
    c = Cluster.resolve("pcie-4gpu")
    assignment = {"x": "gpu0", "b": "gpu0", "a": "gpu0", "c": "gpu1"}
    for mode in ("training", "inference"):
        p = plan(g, assignment, mode=mode)
        mine = make_schedule(p)
        assert codes(make_schedule(p, lowered=lower(g, c, CostModel(c), mode))) == codes(mine)
        assert [a.node for a in mine.actions["gpu0"] if isinstance(a, Forward)] == ["x", "b", "a"]
    with pytest.raises(ScheduleError, match="another graph or mode"):
        make_schedule(plan(g, assignment), lowered=lower(g, c, CostModel(c), "inference"))


# -- validation -----------------------------------------------------------------------------------
def test_a_receive_whose_send_was_removed_is_refused_naming_both_devices():
    schedule = make_schedule(pipeline(GPUS[:2], 2), "gpipe")
    schedule.actions["gpu0"].remove(Send("gpu0", "gpu1", "a", 1))
    with pytest.raises(ScheduleError) as error:
        validate(schedule)
    assert "messages do not match (1 without a partner)" in str(error.value)
    assert "gpu1 step 2, R(a<-gpu0)1: gpu0 never sends it; add S(a->gpu1)1 to gpu0's actions" in str(error.value)


def test_a_cyclic_wait_is_refused_naming_the_devices_their_actions_and_the_cycle():
    """Each device receives before it sends what the other waits for."""
    schedule = Schedule("by hand", "latency", 1, {
        "gpu0": [Forward("gpu0", 0, node="a"), Recv("gpu0", "gpu1", "b", 0), Send("gpu0", "gpu1", "a", 0)],
        "gpu1": [Forward("gpu1", 0, node="b"), Recv("gpu1", "gpu0", "a", 0), Send("gpu1", "gpu0", "b", 0)],
    })  # fmt: skip
    with pytest.raises(ScheduleError) as error:
        validate(schedule)
    assert isinstance(error.value, PlacementError)
    assert str(error.value).splitlines() == [
        "the schedule deadlocks: 2 device(s) cannot go on:",
        "  gpu0 at step 1, R(b<-gpu1)0: waits for gpu1 (itself stuck at step 1, R(a<-gpu0)0) to send it at its step 2",
        "  gpu1 at step 1, R(a<-gpu0)0: waits for gpu0 (itself stuck at step 1, R(b<-gpu1)0) to send it at its step 2",
        "cycle of waits: gpu0 -> gpu1 -> gpu0. Sends do not block: on one of these devices, move the send that "
        "its peer waits for before the receive it is stuck at.",
    ]
    schedule.actions["gpu0"].reverse()  # gpu0 sends first: both go through
    validate(schedule)


def test_a_collective_that_a_member_never_reaches_is_refused():
    schedule = make_schedule(pipeline([["gpu0", "gpu1"], ["gpu2"]], 2, params=8.0), "gpipe")
    schedule.actions["gpu1"] = [a for a in schedule.actions["gpu1"] if not isinstance(a, AllReduce)]
    with pytest.raises(ScheduleError, match=r"gpu0 at step \d+, AR: waits for gpu1 \(finished without reaching it\)"):
        validate(schedule)


def test_an_action_in_another_devices_list_or_listed_twice_is_refused():
    schedule = make_schedule(pipeline(GPUS[:2], 2), "gpipe")
    schedule.actions["gpu1"].append(OptimizerStep("gpu0"))
    with pytest.raises(ScheduleError, match=r"gpu1 step 9, OPT: the action is for device 'gpu0'"):
        validate(schedule)
    schedule.actions["gpu1"][-1] = schedule.actions["gpu1"][1]
    with pytest.raises(ScheduleError, match=r"gpu1 step 9, F0: the same action is already at step 1"):
        validate(schedule)


# -- printing -------------------------------------------------------------------------------------
def test_the_table_shows_every_device_within_100_columns():
    schedule = make_schedule(pipeline(GPUS[:4], 8), "1f1b")
    text = str(schedule)
    lines = text.splitlines()
    assert text == schedule.table()
    assert lines[0] == "1f1b schedule of a throughput plan: 8 microbatch(es) on 4 device(s)"
    assert lines[1].split() == ["step", "gpu0", "gpu1", "gpu2", "gpu3"]
    assert lines[2].split() == ["0", "F0", "R(a<-gpu0)0", "R(b<-gpu1)0", "R(c<-gpu2)0"]
    assert lines[-1].endswith("OPT: optimizer step")
    assert max(map(len, lines)) <= 100


def test_a_wide_table_wraps_into_blocks_of_devices_and_cuts_long_codes_in_the_middle():
    names = [f"node_with_a_long_name_{i}" for i in range(8)]
    g = Graph("g")
    for n in names:
        g.add_node(NodeData(n, "op"))
    for u, v in zip(names, names[1:]):
        g.add_edge(u, v)
    schedule = make_schedule(plan(g, {n: f"device{i}" for i, n in enumerate(names)}))
    lines = schedule.table().splitlines()
    assert max(map(len, lines)) <= 100
    headers = [line.split() for line in lines if line.startswith("step")]
    assert len(headers) > 1 and sum((h[1:] for h in headers), []) == [f"device{i}" for i in range(8)]
    assert any("…" in line and line.rstrip().endswith("0") for line in lines[1:])


def test_the_package_does_not_import_torch():
    check = "import sys, placement.schedules; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", check], check=True)
