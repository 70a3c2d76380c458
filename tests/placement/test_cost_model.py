"""The cost model: its chain of sources for node times, and transfer times on routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from graphc.ir.profiled import with_fixed_costs, with_split_times
from placement import (
    Cluster,
    ConfigurationError,
    CostModel,
    Device,
    Link,
    ProfiledTimes,
    ProfileFormatError,
    Switch,
    graph_inputs,
)
from placement.specs import DEVICE_SPECS


def cluster(*devices: Device, bandwidth: float = 1e9, latency: float = 1e-3) -> Cluster:
    return Cluster("c", devices, [Link(d.name, "sw", "pcie", bandwidth, latency) for d in devices], [Switch("sw", "pcie_switch", "h")])


def dev(name: str, kind: str, category: str = "gpu", flops: float = 1e12, bw: float = 1e11, overhead: float = 1e-5) -> Device:
    return Device(name, kind, category, "h", {"float32": flops, "float16": 4 * flops}, bw, 1e10, overhead)


GPU = dev("g", "V100", flops=15.7e12, bw=900e9)
H100 = dev("h", "H100", flops=67e12, bw=3350e9)
CPU = dev("c", "cpu", "cpu", flops=1e11, bw=2e10, overhead=2e-6)
ACC = dev("a", "accelerator", "accelerator")
CM = CostModel(cluster(GPU, H100, CPU, ACC), compute_efficiency=0.5, memory_efficiency=0.5)


# -- measured -------------------------------------------------------------------------------------
def test_measured_time_of_the_exact_kind_is_used_as_given() -> None:
    node = NodeData("n", "Conv2d", measured_ms={"V100": 3.0}, measured_bwd_ms={"V100": 5.0}, fwd_flops=1e15)
    assert CM.node_ms(node, GPU) == 3.0
    assert CM.node_ms(node, "g", backward=True) == 5.0
    assert CM.explain(node, GPU) == (3.0, "measured:V100")


def test_measured_time_by_category_label() -> None:
    node = NodeData("n", "layer", measured_ms={"cpu": 7.0, "accelerator": 0.5})
    assert CM.explain(node, CPU) == (7.0, "measured:cpu")
    assert CM.explain(node, ACC) == (0.5, "measured:accelerator")


def test_measured_on_another_gpu_kind_is_scaled_by_peak_ratio() -> None:
    node = NodeData("n", "Conv2d", measured_ms={"V100": 10.0}, measured_bwd_ms={"V100": 20.0})
    ratio = DEVICE_SPECS["V100"].peak_flops["float32"] / H100.peak("float32")
    assert CM.explain(node, H100) == (pytest.approx(10.0 * ratio), "measured-scaled:V100")
    assert CM.node_ms(node, H100, backward=True) == pytest.approx(20.0 * ratio)
    half = NodeData("m", "Linear", output_dtypes=["float16"], measured_ms={"V100": 10.0})
    assert CM.node_ms(half, H100) == pytest.approx(10.0 * 125e12 / H100.peak("float16"))


def test_measured_on_a_gpu_is_not_scaled_to_a_cpu() -> None:
    node = NodeData("n", "op", measured_ms={"V100": 10.0}, fwd_flops=2e9)
    assert CM.explain(node, CPU) == (pytest.approx(1e3 * 2e9 / (1e11 * 0.5)), "analytic")


def test_measured_on_a_gpu_is_scaled_to_a_cpu_when_no_flops_are_known() -> None:
    node = NodeData("n", "op", measured_ms={"V100": 10.0})
    ms, source = CM.explain(node, CPU)
    assert source == "measured-scaled:V100"
    assert ms == pytest.approx(10.0 * GPU.peak() / CPU.peak())


def test_use_measured_false_falls_back_to_the_roofline() -> None:
    node = NodeData("n", "op", measured_ms={"V100": 10.0}, fwd_flops=1e12)
    cm = CostModel(CM.cluster, use_measured=False, compute_efficiency=0.5)
    assert cm.explain(node, GPU) == (pytest.approx(1e3 * 1e12 / (15.7e12 * 0.5)), "analytic")


# -- profiled -------------------------------------------------------------------------------------
def test_profiled_table_is_used_for_its_kind(tmp_path: Path) -> None:
    node = NodeData("n", "aten.mm.default", output_shapes=[[64, 64]], output_dtypes=["float32"], fwd_flops=2 * 64**3)
    other_shape = NodeData("n2", "aten.mm.default", output_shapes=[[32, 64]], output_dtypes=["float32"], fwd_flops=2 * 64**3)
    table = ProfiledTimes()
    table.add(node, "cpu", 0.25, 0.5)
    cm = CostModel(CM.cluster, profiled=table)
    assert cm.explain(node, CPU) == (0.25, "profiled")
    assert cm.node_ms(node, CPU, backward=True) == 0.5
    assert cm.explain(node, GPU)[1] == "analytic"  # no entry for V100
    assert cm.explain(other_shape, CPU)[1] == "analytic"  # other shapes, other key
    path = tmp_path / "times.json"
    table.save(path)
    again = ProfiledTimes.load(path)
    assert again == table and len(again) == 1
    assert again.get_key(node.profile_key(), "cpu") == (0.25, 0.5)


def test_exact_measurement_beats_profile_beats_scaling() -> None:
    node = NodeData("n", "op", measured_ms={"V100": 10.0, "cpu": 4.0})
    table = ProfiledTimes()
    table.add(node, "cpu", 1.0, 2.0)
    table.add(node, "H100", 3.0, 6.0)
    cm = CostModel(CM.cluster, profiled=table)
    assert cm.explain(node, CPU) == (4.0, "measured:cpu")
    assert cm.explain(node, H100) == (3.0, "profiled")


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"key": "k", "device_kind": "cpu", "fwd_ms": -1, "bwd_ms": 0}, r"entries\[0\]\.fwd_ms"),
        ({"key": 3, "device_kind": "cpu", "fwd_ms": 1, "bwd_ms": 0}, r"entries\[0\]\.key"),
        ({"key": "k", "device_kind": "cpu", "fwd_ms": 1, "bwd_ms": 0, "x": 1}, r"entries\[0\]\.x"),
    ],
)
def test_profile_cache_validation_names_the_field(entry: dict, field: str, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": "graphc.profiled_times", "version": 1, "entries": [entry]}))
    with pytest.raises(ProfileFormatError, match=rf"p\.json: {field}"):
        ProfiledTimes.load(path)


def test_a_version_1_profile_still_loads_and_a_table_with_fixed_parts_and_split_times_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    entry = {"key": "k", "device_kind": "cpu", "fwd_ms": 1.5, "bwd_ms": 2.5}
    path.write_text(json.dumps({"schema": "graphc.profiled_times", "version": 1, "entries": [entry]}))
    old = ProfiledTimes.load(path)
    assert old.times == {("k", "cpu"): (1.5, 2.5)} and old.fixed == {}
    old.add_fixed_key("k", "cpu", 0.5, 1.0)
    old.add_split_key("k", "cpu", 8, 0.25, 0.5)
    old.save(tmp_path / "new.json")
    assert json.loads((tmp_path / "new.json").read_text())["version"] == 3
    again = ProfiledTimes.load(tmp_path / "new.json")
    assert again.times == old.times and again.fixed == {("k", "cpu"): (0.5, 1.0)}
    assert again.split == {("k", "cpu"): {8: (0.25, 0.5)}}
    half = {**entry, "fwd_fixed_ms": 0.5}
    path.write_text(json.dumps({"schema": "graphc.profiled_times", "version": 2, "entries": [half]}))
    with pytest.raises(ProfileFormatError, match="go together"):
        ProfiledTimes.load(path)
    for split, why in (({"1": [1, 2]}, "parts >= 2"), ({"4": [1]}, "expected \\[fwd_ms, bwd_ms\\]"), ([1, 2], "expected an object")):
        path.write_text(json.dumps({"schema": "graphc.profiled_times", "version": 3, "entries": [{**entry, "split": split}]}))
        with pytest.raises(ProfileFormatError, match=f"entries\\[0\\].split.*{why}"):
            ProfiledTimes.load(path)
    path.write_text(json.dumps({"schema": "graphc.profiled_times", "version": 2, "entries": [{**entry, "split": {"4": [1, 2]}}]}))
    with pytest.raises(ProfileFormatError, match="unknown field"):  # a version 2 file has none
        ProfiledTimes.load(path)


def test_fixed_parts_are_fitted_through_two_batch_sizes_and_kept_within_the_time() -> None:
    full, small = Graph("g"), Graph("g")
    for name in ("a", "b", "c"):
        full.add_node(NodeData(name, "op", output_shapes=[[8, 4]]))
        small.add_node(NodeData(name, "op", output_shapes=[[2, 4]]))
    full.add_node(NodeData("only_full", "op", output_shapes=[[8, 5]]))
    at_8, at_2 = ProfiledTimes(), ProfiledTimes()
    at_8.add(full.node("a"), "cpu", 9.0, 17.0)  # 1 + 1 per sample, 1 + 2 per sample
    at_2.add(small.node("a"), "cpu", 3.0, 5.0)
    at_8.add(full.node("b"), "cpu", 4.0, 4.0)
    at_2.add(small.node("b"), "cpu", 0.5, 5.0)  # noise: below a quarter (fixed < 0), above the full batch
    at_8.add(full.node("c"), "cpu", 4.0, 4.0)  # not profiled at the small batch
    at_8.add(full.node("only_full"), "cpu", 1.0, 1.0)
    fitted = with_fixed_costs(at_8, full, at_2, small, 0.25, "cpu")
    assert fitted.times == at_8.times
    assert fitted.fixed == {(full.node("a").profile_key(), "cpu"): (1.0, 1.0), (full.node("b").profile_key(), "cpu"): (0.0, 4.0)}
    with pytest.raises(ConfigurationError):
        with_fixed_costs(at_8, full, at_2, small, 1.0, "cpu")


# -- analytic -------------------------------------------------------------------------------------
def test_roofline_compute_bound_memory_bound_and_floor() -> None:
    cm = CostModel(cluster(GPU), compute_efficiency=0.5, memory_efficiency=0.5)
    compute = NodeData("mm", "mm", fwd_flops=15.7e9, bwd_flops=31.4e9, bytes_read=1e3, bytes_written=1e3)
    assert cm.node_ms(compute, GPU) == pytest.approx(2.0)  # 15.7 GFLOP at half of 15.7 TFLOP/s
    assert cm.node_ms(compute, GPU, backward=True) == pytest.approx(4.0)
    memory = NodeData("relu", "relu", fwd_flops=1e6, bwd_flops=1e6, bytes_read=450e6, bytes_written=450e6)
    assert cm.node_ms(memory, GPU) == pytest.approx(2.0)  # 900 MB at half of 900 GB/s
    assert cm.node_ms(memory, GPU, backward=True) == pytest.approx(4.0)  # twice the bytes
    tiny = NodeData("view", "view", fwd_flops=1.0, bwd_flops=1.0)
    assert cm.node_ms(tiny, GPU) == pytest.approx(1e3 * GPU.op_overhead_s)
    no_grad = NodeData("idx", "arange", fwd_flops=10.0)
    assert cm.node_ms(no_grad, GPU, backward=True) == 0.0


def test_roofline_uses_the_dtype_peak() -> None:
    half = NodeData("mm", "mm", output_dtypes=["float16"], fwd_flops=4e12)
    cm = CostModel(cluster(GPU), compute_efficiency=1.0)
    assert cm.node_ms(half, GPU) == pytest.approx(1e3 * 4e12 / (4 * 15.7e12))
    assert CostModel(cluster(GPU), default_dtype="float16", compute_efficiency=1.0).node_ms(
        NodeData("x", "mm", fwd_flops=4e12), GPU
    ) == pytest.approx(1e3 * 4e12 / (4 * 15.7e12))


def test_heterogeneous_devices_price_one_node_differently() -> None:
    c = Cluster.preset("pcie-4gpu")
    cm = CostModel(c)
    node = NodeData("conv", "Conv2d", fwd_flops=1e11, bwd_flops=2e11, bytes_read=1e7, bytes_written=1e7)
    on_gpu, on_cpu = cm.node_ms(node, "gpu0"), cm.node_ms(node, "cpu0")
    assert on_cpu > on_gpu
    assert on_gpu / on_cpu == pytest.approx(c.device("cpu0").peak() / c.device("gpu0").peak())


def test_inputs_cost_nothing() -> None:
    node = NodeData("x", "input", measured_ms={"V100": 18.0}, measured_bwd_ms={"V100": 1.0})
    assert CM.explain(node, GPU) == (0.0, "input")
    g = Graph("g", {"input_nodes": ["node1"]})
    g.add_node(NodeData("node1", "Input", measured_ms={"V100": 18.0}))
    g.add_node(NodeData("x", "input"))
    g.add_node(NodeData("y", "Conv2d"))
    assert graph_inputs(g) == {"node1", "x"}


def test_bulk_node_times_equal_node_ms() -> None:
    table = ProfiledTimes()
    nodes = [
        NodeData("a", "mm", fwd_flops=3e10, bwd_flops=6e10, bytes_read=1e6, bytes_written=2e6),
        NodeData("b", "relu", fwd_flops=1e3, bytes_read=8e8, bytes_written=8e8, output_dtypes=["float16"]),
        NodeData("c", "layer", measured_ms={"V100": 2.0}, measured_bwd_ms={"V100": 3.0}),
        NodeData("d", "input"),
    ]
    for devices in ([GPU, H100, CPU, ACC], [H100, CPU, GPU, GPU]):
        for cm in (CM, CostModel(CM.cluster, profiled=table)):
            fwd, bwd = cm.node_times(nodes, devices)
            assert fwd == [cm.node_ms(n, d) for n, d in zip(nodes, devices)]
            assert bwd == [cm.node_ms(n, d, True) for n, d in zip(nodes, devices)]


def test_bad_efficiency() -> None:
    with pytest.raises(ConfigurationError, match="efficiencies"):
        CostModel(CM.cluster, compute_efficiency=0)


# -- transfers ------------------------------------------------------------------------------------
def test_transfer_is_latency_plus_bytes_over_bottleneck() -> None:
    c = Cluster.preset("pcie-8gpu-two-sockets")
    cm = CostModel(c)
    r = c.route("gpu0", "gpu4")
    assert cm.transfer_ms(90e6, "gpu0", "gpu4") == pytest.approx(1e3 * (r.latency_s + 90e6 / 9e9))
    assert cm.edge_ms(EdgeData(bytes=90e6), "gpu4", "gpu0") == pytest.approx(cm.transfer_ms(90e6, "gpu0", "gpu4"))
    assert cm.transfer_ms(90e6, "gpu3", "gpu3") == 0.0


def test_measured_transfer_labels() -> None:
    edge = EdgeData(bytes=1e9, transfer_ms={"accelerator-cpu": 7.0})
    assert CM.edge_ms(edge, "a", "c") == 7.0
    assert CM.edge_ms(edge, "c", "a") == 7.0  # either direction
    assert CM.edge_ms(edge, "a", "g") == pytest.approx(1e3 * (2e-3 + 1.0))  # no label for the pair: the route
    assert CM.edge_ms(edge, "a", "a") == 0.0
    directed = {"V100->cpu": 1.0, "cpu<->V100": 2.0, "*": 3.0}
    assert CM.transfer_ms(0, "g", "c", directed) == 1.0
    assert CM.transfer_ms(0, "c", "g", directed) == 2.0
    assert CM.transfer_ms(0, "g", "h", directed) == 3.0


def test_a_gpu_uses_times_measured_for_an_accelerator() -> None:
    node = NodeData("n", "op", measured_ms={"cpu": 10.0, "accelerator": 1.0})
    assert CM.explain(node, GPU) == (1.0, "measured:accelerator")
    assert CM.explain(node, CPU) == (10.0, "measured:cpu")


def test_a_microbatch_never_runs_faster_than_its_launch_overhead() -> None:
    # 1 ms per op, the node stands for 3 ops: it takes at least 3 ms, however little data it gets.
    dev = Device("g", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12, op_overhead_s=1e-3)
    node = NodeData("n", "op", fx_nodes=["x", "y", "z"])
    cm = CostModel(Cluster("one", [dev]))
    assert CostModel.task_floor_ms(node, dev) == pytest.approx(3.0)
    assert CostModel.task_floor_ms(NodeData("one", "op"), dev) == pytest.approx(1.0)
    split = [cm.microbatch_ms(12.0, node, dev, m) for m in (1, 2, 4, 8)]
    assert split == pytest.approx([12.0, 6.0, 3.0, 3.0])
    assert cm.microbatch_ms(2.0, node, dev, 4) == pytest.approx(2.0)  # below the floor: unsplit
    assert cm.microbatch_ms(0.0, node, dev, 4) == 0.0  # no pass, no overhead
    measured = NodeData("m", "op", measured_ms={"X": 12.0}, measured_bwd_ms={"X": 0.5}, fx_nodes=["x", "y", "z"])
    assert cm.node_times([measured], [dev], microbatches=4) == ([3.0], [0.5])


def test_a_microbatch_of_a_profiled_node_pays_its_fitted_fixed_part() -> None:
    dev = Device("c", "cpu-x", "cpu", "h", {"float32": 1e10}, 1e10, 1e10, op_overhead_s=1e-6)
    node = NodeData("n", "op", fx_nodes=["x"])
    table = ProfiledTimes()
    table.add(node, "cpu-x", 10.0, 20.0)
    table.add_fixed_key(node.profile_key(), "cpu-x", 2.0, 4.0)
    unfitted = NodeData("u", "op", fx_nodes=["y"], output_shapes=[[3]])
    table.add(unfitted, "cpu-x", 10.0, 20.0)
    cm = CostModel(Cluster("one", [dev]), profiled=table)
    assert cm.node_times([node], [dev], microbatches=4) == ([2 + 8 / 4], [4 + 16 / 4])
    assert cm.node_times([node], [dev], microbatches=1) == ([10.0], [20.0])
    # no fixed part fitted: divided down to the per-op floor (1 us)
    assert cm.node_times([unfitted], [dev], microbatches=2) == ([5.0], [10.0])
    assert cm.microbatch_ms(0.0015, unfitted, dev, 2) == pytest.approx(0.001)
    # a measured time wins over the table, and so does the floor over the table's fixed part
    measured = NodeData("n", "op", fx_nodes=["x"], measured_ms={"cpu-x": 10.0})
    assert cm.microbatch_ms(10.0, measured, dev, 2) == 5.0
    scaled = CostModel(Cluster("one", [dev]), profiled=table.scaled(0.5))
    assert scaled.node_times([node], [dev], microbatches=2) == ([1 + 4 / 2], [2 + 8 / 2])


def test_a_microbatch_of_a_profiled_node_takes_its_split_time_or_the_line_between_two() -> None:
    """Split times measured on a half and an eighth of the batch: a half and an eighth as measured, a
    quarter between them, a sixteenth on the line through the two smallest slices (at least 0), and,
    where the table has none, the fixed part's line."""
    dev = Device("c", "cpu-x", "cpu", "h", {"float32": 1e10}, 1e10, 1e10, op_overhead_s=1e-6)
    node = NodeData("n", "op", fx_nodes=["x"])
    table = ProfiledTimes()
    table.add(node, "cpu-x", 16.0, 32.0)
    table.add_fixed_key(node.profile_key(), "cpu-x", 4.0, 4.0)  # would give 10 / 7 / 5.5 forward
    table.add_split_key(node.profile_key(), "cpu-x", 2, 9.0, 20.0)
    table.add_split_key(node.profile_key(), "cpu-x", 8, 3.0, 1.0)
    cm = CostModel(Cluster("one", [dev]), profiled=table)
    assert cm.node_times([node], [dev], microbatches=2) == ([9.0], [20.0])
    assert cm.node_times([node], [dev], microbatches=8) == ([3.0], [1.0])
    # a quarter: a third of the way from an eighth (0.125) to a half (0.5)
    fwd, bwd = cm.node_times([node], [dev], microbatches=4)
    assert fwd == pytest.approx([3 + 6 / 3]) and bwd == pytest.approx([1 + 19 / 3])
    # a sixteenth: the line through an eighth and a half, 0.0625 below the eighth; the backward's is below 0
    fwd, bwd = cm.node_times([node], [dev], microbatches=16)
    assert fwd == pytest.approx([3 - 6 / 6]) and bwd == [0.0]
    assert cm.node_times([node], [dev], microbatches=1) == ([16.0], [32.0])
    scaled = CostModel(Cluster("one", [dev]), profiled=table.scaled(0.5))
    assert scaled.node_times([node], [dev], microbatches=8) == ([1.5], [0.5])
    only_fixed = ProfiledTimes(table.times, table.fixed)
    assert CostModel(Cluster("one", [dev]), profiled=only_fixed).node_times([node], [dev], microbatches=4)[0] == [4 + 12 / 4]


def test_split_times_are_taken_from_the_nodes_profiled_on_a_slice_of_the_batch() -> None:
    full, small = Graph("g"), Graph("g")
    for name in ("a", "b"):
        full.add_node(NodeData(name, "op", output_shapes=[[8, 4]]))
        small.add_node(NodeData(name, "op", output_shapes=[[1, 4]]))
    full.add_node(NodeData("only_full", "op", output_shapes=[[8, 5]]))
    at_8, at_1 = ProfiledTimes(), ProfiledTimes()
    at_8.add(full.node("a"), "cpu", 9.0, 17.0)
    at_1.add(small.node("a"), "cpu", 2.0, 3.0)
    at_8.add(full.node("b"), "cpu", 4.0, 4.0)  # not profiled on the slice
    at_8.add(full.node("only_full"), "cpu", 1.0, 1.0)
    split = with_split_times(at_8, full, at_1, small, 8, "cpu")
    assert split.times == at_8.times and split.split == {(full.node("a").profile_key(), "cpu"): {8: (2.0, 3.0)}}
    assert at_8.split == {}  # a new table
    with pytest.raises(ConfigurationError, match="at least 2"):
        with_split_times(at_8, full, at_1, small, 1, "cpu")


def test_scaled_profiled_times_multiply_every_entry():
    table = ProfiledTimes()
    table.add_key("k1", "cpu", 2.0, 4.0)
    table.add_key("k2", "V100", 1.0, 0.0)
    doubled = table.scaled(1.5)
    assert doubled.get_key("k1", "cpu") == (3.0, 6.0) and doubled.get_key("k2", "V100") == (1.5, 0.0)
    assert table.get_key("k1", "cpu") == (2.0, 4.0)  # the original is left alone
