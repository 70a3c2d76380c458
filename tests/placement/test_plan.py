"""Plan JSON round trip (by hand and from every solver), validation naming the bad field, and refusal of
a plan made for another graph."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from graphc.ir.importers import load_benchmark
from graphc.ir.jsonfile import write_json
from placement.cluster import Cluster
from placement.cost_model import CostModel
from placement.plan import Plan, PlanFormatError, PlanMismatchError, Stage
from placement.solvers import SOLVERS, solve
from placement.sync import AllReduceSync, ParameterServerSync


def _chain(shape: int = 4) -> Graph:
    graph = Graph("chain")
    for name in ("a", "b", "c"):
        graph.add_node(NodeData(name=name, op="aten.relu.default", output_shapes=[[shape]], output_dtypes=["float32"]))
    graph.add_edge("a", "b", EdgeData(bytes=16))
    graph.add_edge("b", "c", EdgeData(bytes=16))
    return graph


def _plan(graph: Graph) -> Plan:
    return Plan(
        graph_name=graph.name,
        graph_fingerprint=graph.fingerprint(),
        cluster_name="pcie-4gpu",
        objective="throughput",
        mode="training",
        assignment={"a": "gpu0", "b": "gpu0", "c": "gpu1"},
        order={"gpu0": ["a", "b"], "gpu1": ["c"]},
        stages=[Stage(0, ["a", "b"], ["gpu0"]), Stage(1, ["c"], ["gpu1"])],
        microbatches=4,
        predicted_step_ms=3.5,
        peak_memory_bytes={"gpu0": 1e6, "gpu1": 2e6},
        lower_bound_ms=3.0,
        gap=0.1,
        solver="dp-contiguous",
        solve_seconds=0.01,
        settings={"seed": 0},
    )


def test_plan_round_trips_through_json(tmp_path):
    plan = _plan(_chain())
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == plan
    assert loaded.devices_used() == ["gpu0", "gpu1"]
    assert loaded.nodes_on("gpu0") == ["a", "b"]
    assert loaded.ratio_to_bound() == pytest.approx(3.5 / 3.0)


def test_a_plans_cost_model_keeps_its_co_run_slowdown_through_json(tmp_path):
    cluster = Cluster.preset("local", workers=2)
    graph = _chain()
    plan = solve(graph, cluster, solver="round-robin", cost_model=CostModel(cluster, corun_slowdown={2: 1.25}))
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.cost_model.corun_slowdown == {2: 1.25}
    assert loaded.simulate().step_ms == plan.simulate().step_ms


@pytest.mark.parametrize(
    "sync", [AllReduceSync("hierarchical", 4e6), AllReduceSync("ring", None), ParameterServerSync(("cpu0", "cpu1"), 0, 1e6)]
)
def test_a_plans_sync_round_trips_through_json(tmp_path, sync):
    plan = replace(_plan(_chain()), sync=sync, stages=[Stage(0, ["a", "b", "c"], ["gpu0", "gpu1"])])
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["sync"]["kind"] == sync.KIND
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.sync == sync and loaded == plan
    doc = plan.to_dict()
    del doc["sync"]
    assert Plan.from_dict(doc).sync == AllReduceSync()  # a plan written before sync existed: DDP's default


def test_parameter_servers_outside_the_embedded_cluster_are_refused(tmp_path):
    plan = replace(_plan(_chain()), sync=ParameterServerSync(("cpu0", "cpu7")), cluster=Cluster.preset("pcie-4gpu"))
    plan.save(tmp_path / "plan.json")
    with pytest.raises(PlanFormatError, match=r"plan.json: sync.servers: \['cpu7'\] is not a device of the embedded cluster"):
        Plan.load(tmp_path / "plan.json")
    plan.sync = ParameterServerSync(("cpu0",))
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").sync == plan.sync


@pytest.mark.parametrize(
    "change,field",
    [
        ({"objective": "speed"}, "objective"),
        ({"microbatches": 0}, "microbatches"),
        ({"order": {"gpu1": ["a"]}}, "order.gpu1[0]"),
        ({"predicted_step_ms": -1}, "predicted_step_ms"),
        ({"version": 99}, "version"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_malformed_plan_names_the_field(tmp_path, change, field):
    doc = _plan(_chain()).to_dict()
    doc.update(change)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(PlanFormatError, match=f"bad.json: {field.replace('[', '.').replace(']', '.')}"):
        Plan.load(tmp_path / "bad.json")


def test_plan_for_another_graph_is_refused_with_the_reason():
    plan = _plan(_chain())
    plan.check_matches(_chain())  # same structure: accepted
    with pytest.raises(PlanMismatchError, match="other ops, shapes or edges"):
        plan.check_matches(_chain(shape=8))
    renamed = _chain()
    renamed.add_node(NodeData(name="d", op="aten.relu.default"))
    with pytest.raises(PlanMismatchError, match=r"nodes without a device: \['d'\]"):
        plan.check_matches(renamed)


def test_devices_used_counts_the_replicas_of_a_replicated_stage():
    plan = Plan(graph_name="g", graph_fingerprint="", cluster_name="c", objective="throughput", mode="training",
                assignment={"a": "gpu0", "b": "gpu1", "c": "gpu1"}, microbatches=4,
                stages=[Stage(0, ["a"], ["gpu0"]), Stage(1, ["b", "c"], ["gpu1", "gpu3", "gpu2"])])  # fmt: skip
    assert plan.devices_used() == ["gpu0", "gpu1", "gpu3", "gpu2"]


def _diamond() -> Graph:
    """a -> (b, c, d) -> e, heavy enough that CP-SAT cannot prove optimality within 2 s on pcie-4gpu."""
    graph = Graph("diamond")
    for name in "abcde":
        graph.add_node(NodeData(name=name, op="aten.mm.default", fwd_flops=4e9, bwd_flops=8e9, output_bytes=4e6,
                                output_shapes=[[1024, 1024]], output_dtypes=["float32"], param_bytes=4e6))  # fmt: skip
    for src, dst in ("ab", "ac", "ad", "be", "ce", "de"):
        graph.add_edge(src, dst, EdgeData(bytes=4e6))
    return graph


def _solved_plans() -> list[tuple[str, Graph, Cluster, dict]]:
    """(id, graph, cluster, solve arguments) for every registered solver; CP-SAT both proven optimal (a
    chain) and not (the diamond), ``auto`` for both objectives; ``expert`` needs a published split."""
    gpus = Cluster.preset("pcie-4gpu")
    cases = [(name, _diamond(), gpus, {"solver": name, "time_limit_s": 2.0}) for name in SOLVERS if name != "expert"]
    cases.append(("cp-sat-proven", _chain(1024), gpus, {"solver": "cp-sat", "time_limit_s": 2.0}))
    cases.append(("auto-throughput", _diamond(), gpus, {"solver": "auto", "objective": "throughput", "time_limit_s": 2.0}))
    expert_graph = load_benchmark("dnn-partitioning/latency/bert24_inference.json")
    cases.append(("expert", expert_graph, Cluster.preset("accelerators-cpu"), {"solver": "expert"}))
    return cases


@pytest.mark.parametrize("case", _solved_plans(), ids=lambda case: case[0])
def test_a_plan_from_every_solver_saves_and_loads_unchanged(case, tmp_path):
    _, graph, cluster, arguments = case
    plan = solve(graph, cluster, **arguments)
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == plan
    assert (loaded.assignment, loaded.settings, loaded.predicted_step_ms) == (plan.assignment, plan.settings, plan.predicted_step_ms)
    assert loaded.graph == graph and loaded.cluster.name == cluster.name


def test_cp_sat_records_whether_it_proved_optimality():
    gpus = Cluster.preset("pcie-4gpu")
    assert solve(_chain(1024), gpus, solver="cp-sat", time_limit_s=2.0).settings["proven_optimal"] is True
    assert solve(_diamond(), gpus, solver="cp-sat", time_limit_s=2.0).settings["proven_optimal"] is False


def test_numpy_scalars_are_written_as_json_values(tmp_path):
    write_json(tmp_path / "doc.json", {"proven": np.bool_(True), "count": np.int64(3), "ms": np.float32(0.5)})
    assert json.loads((tmp_path / "doc.json").read_text()) == {"proven": True, "count": 3, "ms": 0.5}


def test_a_cost_graph_given_as_a_plan_says_to_place_it_first(tmp_path):
    _chain().save(tmp_path / "g.json")
    with pytest.raises(PlanFormatError, match=r"g\.json: this is a cost graph, not a plan: place it first \(graphc plan"):
        Plan.load(tmp_path / "g.json")
