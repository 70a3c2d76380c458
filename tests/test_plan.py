"""Plan JSON round trip, validation naming the bad field, and refusal of a plan made for another graph."""

from __future__ import annotations

import json

import pytest

from graphc.graph import EdgeData, Graph, NodeData
from placement.plan import Plan, PlanFormatError, PlanMismatchError, Stage


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
