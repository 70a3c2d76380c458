"""The simulator executing schedules (placement.schedules) and pricing what the runtime pays: exact
timelines of hand-built GPipe and 1F1B pipelines, transfers serialised on devices without a copy
engine, and the memory terms (gradients in backward, outputs and loss, receive buffers, 1F1B's smaller
peak). Every expected number is worked out by hand in the comments."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_simulate import check_invariants, random_graph, two_hosts

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, ConfigurationError, Device, Link, PlacementError, Plan, Switch, simulate
from placement.errors import ArgumentTypeError
from placement.plan import Stage
from placement.schedules import Backward, Forward, Recv, Schedule, make_schedule

MB = 1e6  # bytes; 1 ms on the 1 GB/s links of the test clusters


def star(n: int = 2, category: str = "gpu") -> Cluster:
    """``n`` devices ``d0 ..`` of kind X, each on its own 1 GB/s full-duplex link to one switch."""
    devices = [Device(f"d{i}", "X", category, "h", {"float32": 1e12}, 1e11, 1e12) for i in range(n)]
    links = [Link(d.name, "sw", "pcie", 1e9, 0.0) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def chain(*nodes: tuple[str, float, float, float, float], edge_bytes: float = 0.0) -> Graph:
    """A graph input ``x`` feeding the chain of ``nodes`` = (name, fwd ms, bwd ms, activation bytes,
    output bytes), whole-batch figures; each edge but x's carries ``edge_bytes``."""
    g = Graph("chain")
    g.add_node(NodeData("x", "input"))
    previous = "x"
    for name, f, b, act, out in nodes:
        g.add_node(NodeData(name, "op", measured_ms={"X": f}, measured_bwd_ms={"X": b}, activation_bytes=act, output_bytes=out))
        g.add_edge(previous, name, EdgeData(bytes=0.0 if previous == "x" else edge_bytes))
        previous = name
    return g


def pipeline_plan(g: Graph, stages: list[list[str]], microbatches: int, schedule: str, cluster: Cluster,
                  mode: str = "training") -> Plan:  # fmt: skip
    """Stage ``i`` holds the nodes ``stages[i]`` on device ``d{i}``."""
    st = [Stage(i, nodes, [f"d{i}"]) for i, nodes in enumerate(stages)]
    assignment = {n: s.devices[0] for s in st for n in s.nodes}
    return Plan(g.name, g.fingerprint(), cluster.name, "throughput", mode, assignment, stages=st,
                microbatches=microbatches, schedule=schedule, graph=g, cluster=cluster)  # fmt: skip


def compute(result, names: str = "abcdefgh") -> list[tuple]:
    """(kind, node, microbatch, device, start, end) of the compute tasks of the named nodes, by start
    time, then device."""
    tasks = [(e.kind[0].upper(), e.name, e.microbatch, e.device, round(e.start_ms, 9), round(e.end_ms, 9))
             for e in result.timeline if e.kind in ("forward", "backward") and e.name in names]  # fmt: skip
    return sorted(tasks, key=lambda t: (t[4], t[3]))


# -- exact pipelines ------------------------------------------------------------------------------
# x -> a on d0 (stage 0), b on d1 (stage 1); 3 microbatches. Whole-batch times 3 ms forward and 6 ms
# backward, so 1 and 2 ms per microbatch; 3 MB on the edge a -> b, 1 MB (1 ms) per microbatch, and
# its gradient back the same.
TWO_STAGES = chain(("a", 3, 6, 0, 3 * MB), ("b", 3, 6, 0, 0), edge_bytes=3 * MB)


def test_gpipe_on_two_stages_exact_timeline() -> None:
    plan = pipeline_plan(TWO_STAGES, [["x", "a"], ["b"]], 3, "gpipe", star())
    r = plan.simulate()
    # d0: F(a) k at [k, k+1]; a's output reaches d1 at k+2. d1: F(b) 0 1 2 back to back from 2, then
    # B(b) 0 1 2 from 5 (2 ms each); gradients back at 8, 10, 12; d0's B(a) 0 1 2 from 8, 2 ms each.
    assert compute(r) == [
        ("F", "a", 0, "d0", 0, 1), ("F", "a", 1, "d0", 1, 2), ("F", "a", 2, "d0", 2, 3),
        ("F", "b", 0, "d1", 2, 3), ("F", "b", 1, "d1", 3, 4), ("F", "b", 2, "d1", 4, 5),
        ("B", "b", 0, "d1", 5, 7), ("B", "b", 1, "d1", 7, 9), ("B", "a", 0, "d0", 8, 10),
        ("B", "b", 2, "d1", 9, 11), ("B", "a", 1, "d0", 10, 12), ("B", "a", 2, "d0", 12, 14),
    ]  # fmt: skip
    assert r.step_ms == 14
    sends = [(e.kind, e.microbatch, e.start_ms, e.end_ms) for e in r.timeline if e.kind.startswith("send")]
    assert sends == [("send", 0, 1, 2), ("send", 1, 2, 3), ("send", 2, 3, 4),
                     ("send_grad", 0, 7, 8), ("send_grad", 1, 9, 10), ("send_grad", 2, 11, 12)]  # fmt: skip


def test_one_f_one_b_on_two_stages_exact_timeline() -> None:
    plan = pipeline_plan(TWO_STAGES, [["x", "a"], ["b"]], 3, "1f1b", star())
    r = plan.simulate()
    # d0 runs F0 F1 B0 F2 B1 B2 (one warm-up forward), d1 F0 B0 F1 B1 F2 B2.
    # d0: F(a)0 [0,1], F(a)1 [1,2]; d1: F(b)0 [2,3] (input at 2), B(b)0 [3,5], gradient at 6;
    # d0: B(a)0 [6,8] then F(a)2 [8,9]; d1: F(b)1 [5,6] (input there since 3), B(b)1 [6,8], gradient
    # at 9; d0: B(a)1 [9,11]; d1: F(b)2 [10,11] (a2 sent [9,10]), B(b)2 [11,13], gradient at 14;
    # d0: B(a)2 [14,16].
    assert compute(r) == [
        ("F", "a", 0, "d0", 0, 1), ("F", "a", 1, "d0", 1, 2), ("F", "b", 0, "d1", 2, 3),
        ("B", "b", 0, "d1", 3, 5), ("F", "b", 1, "d1", 5, 6), ("B", "a", 0, "d0", 6, 8),
        ("B", "b", 1, "d1", 6, 8), ("F", "a", 2, "d0", 8, 9), ("B", "a", 1, "d0", 9, 11),
        ("F", "b", 2, "d1", 10, 11), ("B", "b", 2, "d1", 11, 13), ("B", "a", 2, "d0", 14, 16),
    ]  # fmt: skip
    assert r.step_ms == 16
    assert simulate(plan).step_ms == 16  # simulate(plan) is Plan.simulate


def test_a_schedule_is_run_in_its_order_even_when_another_task_is_ready() -> None:
    # Two independent nodes on one device: the ready queue runs p first (topological order); a
    # schedule that lists q first runs q first, and its backwards in the order it gives.
    g = Graph("two")
    for name, ms in (("p", 1.0), ("q", 2.0)):
        g.add_node(NodeData(name, "op", measured_ms={"X": ms}, measured_bwd_ms={"X": ms}))
    c = star(1)
    acts = [Forward("d0", 0, node="q"), Forward("d0", 0, node="p"), Backward("d0", 0, node="p"), Backward("d0", 0, node="q")]
    r = simulate(g, c, {"p": "d0", "q": "d0"}, schedule=Schedule("by-hand", "latency", 1, {"d0": acts}))
    assert [(k, n, s, e) for k, n, _, _, s, e in compute(r, "pq")] == [
        ("F", "q", 0, 2), ("F", "p", 2, 3), ("B", "p", 3, 4), ("B", "q", 4, 6)]  # fmt: skip


def test_a_schedule_must_run_exactly_the_placements_tasks() -> None:
    g = chain(("a", 1, 1, 0, 0), ("b", 1, 1, 0, 0))
    place = {"x": "d0", "a": "d0", "b": "d0"}
    fwd = [Forward("d0", 0, node=n) for n in "xab"]
    bwd = [Backward("d0", 0, node=n) for n in "ba"]
    with pytest.raises(PlacementError, match="never runs the backward of 'a' \\(microbatch 0\\) on d0"):
        simulate(g, star(), place, schedule=Schedule("s", "latency", 1, {"d0": fwd + bwd[:1]}))
    with pytest.raises(PlacementError, match="runs the forward of 'b' \\(microbatch 0\\) a second time"):
        simulate(g, star(), place, schedule=Schedule("s", "latency", 1, {"d0": [*fwd, Forward("d0", 0, node="b"), *bwd]}))
    with pytest.raises(PlacementError, match="the placement puts it on d0"):
        simulate(g, star(), place, schedule=Schedule("s", "latency", 1, {"d0": fwd[:2] + bwd, "d1": fwd[2:]}))
    with pytest.raises(PlacementError, match="deadlocks.*d0 waits to run the forward of 'b'"):
        simulate(g, star(), place, schedule=Schedule("s", "latency", 1, {"d0": [fwd[0], fwd[2], fwd[1], *bwd]}))
    with pytest.raises(PlacementError, match="for 1 microbatch\\(es\\), the simulation for 2"):
        simulate(g, star(), place, microbatches=2, schedule=Schedule("s", "latency", 1, {"d0": fwd + bwd}))
    with pytest.raises(PlacementError, match="R\\(a<-d1\\)0 receives a tensor that this placement does not send there"):
        simulate(g, star(), place, schedule=Schedule("s", "latency", 1, {"d0": [Recv("d0", "d1", "a", 0), *fwd, *bwd]}))
    with pytest.raises(ConfigurationError, match="pass no order"):
        simulate(g, star(), place, order={"d0": ["x", "a", "b"]}, schedule=Schedule("s", "latency", 1, {"d0": fwd + bwd}))
    with pytest.raises(ArgumentTypeError, match="schedule must be a placement.schedules.Schedule, got str"):
        simulate(g, star(), place, schedule="gpipe")
    # The graph input's backward, which no schedule lists, is simulated after its microbatch's.
    r = simulate(g, star(), place, schedule=Schedule("s", "latency", 1, {"d0": fwd + bwd}))
    assert r.step_ms == 4


def test_plan_schedule_is_saved_and_defaults_by_stages(tmp_path) -> None:
    plan = pipeline_plan(TWO_STAGES, [["x", "a"], ["b"]], 3, "1f1b", star())
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again.schedule == "1f1b" and again.simulate().step_ms == 16
    assert (plan.schedule_name(), Plan("g", "f", "c", "latency", "training", {}).schedule_name()) == ("1f1b", "node-order")
    plan.schedule = ""
    assert plan.schedule_name() == "gpipe" and plan.simulate().step_ms == 14
    assert plan.simulate(schedule="1f1b").step_ms == 16


# -- devices without a copy engine -------------------------------------------------------------
@pytest.mark.parametrize("category, step", [("gpu", 4), ("cpu", 5)])
def test_transfers_of_a_cpu_device_hold_its_compute(category: str, step: float) -> None:
    # p [0,1] and then s on d0; r [0,3] then q (which reads p's 1 MB output) on d1.
    # GPUs: the send [1,2] overlaps s [1,2] on d0 and r on d1; q [3,4]: step 4.
    # CPUs: the send waits for d1 to finish r, [3,4], holding d0 from its request at 1 until 4 and d1;
    # s and q run [4,5]: step 5.
    g = Graph("g")
    for name, ms in (("p", 1.0), ("s", 1.0), ("r", 3.0), ("q", 1.0)):
        g.add_node(NodeData(name, "op", measured_ms={"X": ms}))
    g.add_edge("p", "q", EdgeData(bytes=MB))
    r = simulate(g, star(2, category), {"p": "d0", "s": "d0", "r": "d1", "q": "d1"}, mode="inference")
    send = next(e for e in r.timeline if e.kind == "send")
    if category == "cpu":
        assert (send.start_ms, send.end_ms) == (3, 4)
        assert compute(r, "psrq") == [("F", "p", 0, "d0", 0, 1), ("F", "r", 0, "d1", 0, 3),
                                      ("F", "s", 0, "d0", 4, 5), ("F", "q", 0, "d1", 4, 5)]  # fmt: skip
    else:
        assert (send.start_ms, send.end_ms) == (1, 2)
    assert r.step_ms == step
    assert r.busy_ms["d0"] == r.busy_ms["d1"] - 2 == 2  # compute only


def test_a_cpu_pipeline_serialises_its_gradient_sends() -> None:
    # The GPipe pipeline of test_gpipe_on_two_stages_exact_timeline on CPUs: each 1 ms transfer holds
    # both devices. d0: F(a)0 [0,1], send [1,2], F(a)1 [2,3], send [3,4], F(a)2 [4,5], send [5,6];
    # d1 runs F(b)k as each arrives, [2,3], [4,5], [6,7], then B(b)0 [7,9], gradient [9,10] (holding
    # d1 too), B(b)1 [10,12], gradient [12,13], B(b)2 [13,15], gradient [15,16]; d0's B(a) [10,12],
    # [13,15], [16,18].
    plan = pipeline_plan(TWO_STAGES, [["x", "a"], ["b"]], 3, "gpipe", star(2, "cpu"))
    r = plan.simulate()
    assert compute(r) == [
        ("F", "a", 0, "d0", 0, 1), ("F", "a", 1, "d0", 2, 3), ("F", "b", 0, "d1", 2, 3),
        ("F", "a", 2, "d0", 4, 5), ("F", "b", 1, "d1", 4, 5), ("F", "b", 2, "d1", 6, 7),
        ("B", "b", 0, "d1", 7, 9), ("B", "a", 0, "d0", 10, 12), ("B", "b", 1, "d1", 10, 12),
        ("B", "a", 1, "d0", 13, 15), ("B", "b", 2, "d1", 13, 15), ("B", "a", 2, "d0", 16, 18),
    ]  # fmt: skip
    assert r.step_ms == 18


# -- memory -------------------------------------------------------------------------------------
def test_training_memory_counts_backward_gradients_outputs_and_the_loss() -> None:
    # x -> a -> b on d0, b the graph's output; 2 microbatches, 1 ms per task. Per microbatch:
    # activations a 10, b 20; outputs a 100, b 1000; a's parameters 5 (+ Adam 10, + gradients 5 from B(a)0).
    # Timeline: F(a)0 [0,1] F(b)0 [1,2] F(a)1 [2,3] F(b)1 [3,4] B(b)0 [4,5] B(a)0 [5,6] B(b)1 [6,7]
    # B(a)1 [7,8]. Held: activations from F's end to B's end; b's output from F(b)'s end to the end of
    # the step, the loss's tensor (as large) until B(b) ends, and over B(b) the loss's gradient of it
    # and, b being the graph's output, the larger of its output's gradient (1000) and its input's (100);
    # during B(a) a's output gradient (100; x gets none). At t = 4: activations 60 + outputs 2000 + the
    # loss's tensors 2000 + B(b)0's gradient 1000 + the two microbatches' losses and microbatch 0's loss
    # gradient (4 bytes each) = 6072, the peak.
    g = chain(("a", 2, 2, 20, 200), ("b", 2, 2, 40, 2000), edge_bytes=200)
    g.node("a").param_bytes = 5.0
    g.node("b").is_output = True
    r = simulate(g, star(1), dict.fromkeys("xab", "d0"), microbatches=2)
    assert r.static_memory_bytes["d0"] == 15  # a's gradients come at B(a)0, after the peak
    assert r.peak_memory_bytes["d0"] == 15 + 6072
    g.node("b").is_output = False  # no output, no loss: the peak is at t = 4 with B(b)0's gradient 100
    # (at t = 5: activations 40, a's gradients 5 and its output's gradient 100)
    assert simulate(g, star(1), dict.fromkeys("xab", "d0"), microbatches=2).peak_memory_bytes["d0"] == 15 + 60 + 100


def test_a_receive_buffer_is_held_from_its_recv() -> None:
    # Inference, one microbatch: x -> a on d0 sends 1 MB to b on d1 (arrives at 2); on d1 w -> z -> b,
    # w's output 5 MB freed when z ends at 2, z's 0.5 MB. The GPipe schedule posts the receive of a's
    # output before d1's stage forward, at 0: 1 + 5 MB over [1,2]. By arrival: at most 5 MB.
    g = Graph("g")
    for name, out in (("x", 0.0), ("a", MB), ("w", 5 * MB), ("z", 0.5 * MB), ("b", 0.0)):
        g.add_node(NodeData(name, "input" if name == "x" else "op", measured_ms={"X": 1.0}, output_bytes=out))
    for u, v, nbytes in (("x", "a", 0.0), ("a", "b", MB), ("w", "z", 5 * MB), ("z", "b", 0.5 * MB)):
        g.add_edge(u, v, EdgeData(bytes=nbytes))
    plan = pipeline_plan(g, [["x", "a"], ["w", "z", "b"]], 1, "gpipe", star(), mode="inference")
    assert plan.simulate().peak_memory_bytes["d1"] == 6 * MB
    assert plan.simulate(order={}).peak_memory_bytes["d1"] == 5 * MB  # the ready queues: no Recv


def test_one_f_one_b_peak_memory_is_below_gpipes_on_four_stages() -> None:
    # A chain of 4 nodes, one per stage, 8 microbatches; each holds A = 8 bytes of activations per
    # microbatch (64 whole-batch) and 1 byte of parameters (static 1 + 1 + 2). GPipe: every stage
    # holds all 8 microbatches at the end of its forwards; 1F1B: stage s holds at most 4 - s.
    g = chain(*((n, 1, 2, 64, 0) for n in "abcd"))
    for n in "abcd":
        g.node(n).param_bytes = 1.0
    stages = [["x", "a"], ["b"], ["c"], ["d"]]
    gpipe = pipeline_plan(g, stages, 8, "gpipe", star(4)).simulate()
    ofob = pipeline_plan(g, stages, 8, "1f1b", star(4)).simulate()
    assert gpipe.peak_memory_bytes == {f"d{s}": 4 + 8 * 8 for s in range(4)}
    assert ofob.peak_memory_bytes == {f"d{s}": 4 + (4 - s) * 8 for s in range(4)}
    assert max(ofob.peak_memory_bytes.values()) - 4 == (max(gpipe.peak_memory_bytes.values()) - 4) / 2


# -- random graphs --------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), m=st.integers(1, 3), mode=st.sampled_from(["training", "inference"]))
def test_node_order_schedules_of_random_placements_run_in_their_order(seed: int, n: int, m: int, mode: str) -> None:
    """The simulator's invariants hold, and each device runs its compute in the schedule's order."""
    rng = random.Random(seed)
    g = random_graph(rng, n)
    c = two_hosts()
    place = {name: rng.choice(c.device_names) for name in g.node_names()}
    plan = Plan(g.name, g.fingerprint(), c.name, "latency", mode, place, microbatches=m, graph=g, cluster=c)
    schedule = make_schedule(plan)
    result = simulate(g, c, place, mode=mode, microbatches=m, schedule=schedule)
    check_invariants(g, c, result, mode, m, memory=False)
    ran = {d: [(e.kind[0].upper(), e.name, e.microbatch) for e in sorted(result.timeline, key=lambda e: (e.start_ms, e.end_ms))
               if e.device == d and e.kind in ("forward", "backward") and e.duration_ms > 0]
           for d in c.device_names}  # fmt: skip
    listed = {d: [] for d in c.device_names}
    for d, actions in schedule.actions.items():
        listed[d] = [(type(a).__name__[0], a.node, a.microbatch) for a in actions if isinstance(a, (Forward, Backward))]
    positive = {(e.kind[0].upper(), e.name, e.microbatch) for e in result.timeline if e.duration_ms > 0}
    assert ran == {d: [t for t in tasks if t in positive] for d, tasks in listed.items()}


def test_a_plan_no_schedule_runs_simulates_on_the_ready_queues() -> None:
    # Stage 0 holds b, stage 1 holds a: data flows back to an earlier stage, so no pipeline schedule
    # is made; by default the plan simulates as before (ready queues), a named schedule is refused.
    g = chain(("a", 1, 1, 0, 0), ("b", 1, 1, 0, 0), edge_bytes=MB)
    plan = pipeline_plan(g, [["b"], ["x", "a"]], 1, "", star())
    assert plan.simulate().step_ms == simulate(g, star(), plan.assignment).step_ms == 1 + 1 + 1 + 1 + 1 + 1
    plan.schedule = "gpipe"
    with pytest.raises(PlacementError, match="feeds 'b' of the earlier stage 0"):
        plan.simulate()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), m=st.integers(1, 3), mode=st.sampled_from(["training", "inference"]))
def test_on_random_placements_a_cpu_device_never_computes_while_it_transfers(seed: int, n: int, m: int, mode: str) -> None:
    """Two hosts of two devices each, the first host's CPUs: the simulator's invariants hold, and on
    each CPU its tasks and the transfers from or to it inside its host never overlap (a transfer to the
    other host holds the CPU only for what a message costs its CPU, nothing by default)."""
    rng = random.Random(seed)
    g = random_graph(rng, n)
    c = two_hosts()
    for d in c.devices[:2]:
        d.category = "cpu"
    place = {name: rng.choice(c.device_names) for name in g.node_names()}
    result = simulate(g, c, place, mode=mode, microbatches=m)
    check_invariants(g, c, result, mode, m)
    host = {dev.name: dev.host for dev in c.devices}
    for d in c.device_names[:2]:
        spans = sorted((e.start_ms, e.end_ms) for e in result.timeline if e.end_ms > e.start_ms
                       and (e.device == d or e.src_device == d) and (not e.src_device or host[e.src_device] == host[e.device]))  # fmt: skip
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:])), d
