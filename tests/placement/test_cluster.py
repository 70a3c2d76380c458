"""Clusters: presets, routes and bottlenecks, JSON round trip, validation naming the bad field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from graphc.importers import load_benchmark
from placement import (
    Cluster,
    ClusterFormatError,
    ConfigurationError,
    CostModel,
    Device,
    Link,
    PlacementError,
    Switch,
    cluster_presets,
    lower_bound,
    simulate,
    solve,
)
from placement.presets import (
    DGX1_NVLINKS,
    IB_EDR,
    NVLINK2,
    NVLINK4_PER_GPU,
    PCIE3_X16,
    QPI_P2P,
)
from placement.specs import DEVICE_SPECS


def gpu(name: str, host: str = "h", memory: float = 16e9, kind: str = "X") -> Device:
    return Device(name, kind, "gpu", host, {"float32": 1e13}, 9e11, memory)


def star(n: int = 3) -> Cluster:
    devices = [gpu(f"d{i}") for i in range(n)]
    return Cluster("star", devices, [Link(d.name, "sw", "pcie", 1e9, 1e-6) for d in devices], [Switch("sw", "pcie_switch", "h")])


# -- presets --------------------------------------------------------------------------------------
EXPECTED_PRESETS = {
    "pcie-8gpu-switch-tree", "pcie-8gpu-two-sockets", "pcie-4gpu", "dgx1-v100", "dgx-h100",
    "2x8-v100-ib", "16x8-v100-ib", "accelerators-cpu", "local",
}  # fmt: skip


def test_preset_names_are_listed() -> None:
    assert EXPECTED_PRESETS <= set(cluster_presets())


@pytest.mark.parametrize("name", sorted(set(cluster_presets()) - {"local"}))
def test_every_preset_builds_and_round_trips_through_json(name: str, tmp_path: Path) -> None:
    cluster = Cluster.preset(name)
    assert cluster.summary().startswith(f"Cluster({name!r}")
    path = tmp_path / "c.json"
    cluster.save(path)
    again = Cluster.load(path)
    assert again == cluster
    assert again.to_dict() == json.loads(path.read_text())
    first, last = cluster.device_names[0], cluster.device_names[-1]
    assert again.route(first, last) == cluster.route(first, last)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="no cluster preset 'dgx9'.*dgx1-v100"):
        Cluster.preset("dgx9")


def test_preset_sizes_and_kinds() -> None:
    assert len(Cluster.preset("dgx1-v100")) == 8
    big = Cluster.preset("16x8-v100-ib")
    assert (len(big), len(big.hosts)) == (128, 16)
    assert all(len(big.devices_of_host(h.name)) == 8 for h in big.hosts)
    assert Cluster.preset("2x8-v100-ib").device_names[8] == "h1/gpu0"
    mixed = Cluster.preset("pcie-4gpu")
    assert mixed.kinds() == ["Xeon-E5-2699v3", "K40"]
    assert {d.category for d in mixed} == {"cpu", "gpu"}
    acc = Cluster.preset("accelerators-cpu", accelerators=3, cpus=2)
    assert [d.category for d in acc] == ["accelerator"] * 3 + ["cpu"] * 2


def test_preset_devices_carry_datasheet_figures() -> None:
    v100 = Cluster.preset("dgx1-v100").device("gpu0")
    assert v100.kind == "V100"
    assert v100.peak("float32") == pytest.approx(15.7e12)
    assert v100.peak("float16") == pytest.approx(125e12)
    assert v100.peak("bfloat16") == v100.peak("float32")  # no bf16 on V100: falls back to fp32
    assert v100.memory_bandwidth == pytest.approx(900e9)
    assert Cluster.preset("dgx1-v100", memory_gb=32).device("gpu3").memory_bytes == 32 * 2**30
    h100 = Cluster.preset("dgx-h100").device("gpu0")
    assert h100.peak("bfloat16") == pytest.approx(989.4e12)
    assert h100.memory_bytes == 80 * 2**30
    assert all(spec.source for spec in DEVICE_SPECS.values())


def test_preset_functions_cite_their_figures() -> None:
    from placement import presets

    for fn in (presets.pcie_8gpu_switch_tree, presets.pcie_8gpu_two_sockets, presets.pcie_4gpu,
               presets.dgx1_v100, presets.dgx_h100, presets.infiniband_cluster, presets.local):
        assert re.search(r"\d", fn.__doc__ or ""), fn.__name__


def test_local_preset_uses_cpu_workers_without_gpus() -> None:
    local = Cluster.preset("local", workers=3)
    assert local.device_names == ["cpu0", "cpu1", "cpu2"]
    assert {(d.kind, d.category) for d in local} == {("cpu", "cpu")}
    assert local.route("cpu0", "cpu2").hops == ("cpu0", "shm", "cpu2")
    assert len(Cluster.preset("local")) >= 1


# -- routes ---------------------------------------------------------------------------------------
def test_gpus_across_sockets_cross_the_socket_link_and_are_slower() -> None:
    c = Cluster.preset("pcie-8gpu-two-sockets")
    near = c.route("gpu0", "gpu1")
    far = c.route("gpu0", "gpu4")
    assert near.hops == ("gpu0", "pcie0", "gpu1")
    assert "socket0--socket1" in far.links
    assert near.bandwidth == PCIE3_X16
    assert far.bandwidth == QPI_P2P < near.bandwidth
    assert c.bottleneck_bandwidth("gpu0", "gpu4") == QPI_P2P
    nbytes = 100e6
    assert c.transfer_s("gpu0", "gpu4", nbytes) > c.transfer_s("gpu0", "gpu1", nbytes)
    assert c.transfer_s("gpu0", "gpu1", nbytes) == pytest.approx(near.latency_s + nbytes / PCIE3_X16)


def test_one_switch_tree_never_leaves_the_tree() -> None:
    c = Cluster.preset("pcie-8gpu-switch-tree")
    assert c.route("gpu0", "gpu3").hops == ("gpu0", "pcie1", "gpu3")
    assert c.route("gpu0", "gpu7").hops == ("gpu0", "pcie1", "pcie0", "pcie2", "gpu7")
    assert all("qpi" not in c.links[r // 2].kind for r in c.route("gpu0", "gpu7").resources)
    two_sockets = Cluster.preset("pcie-8gpu-two-sockets")
    assert c.transfer_s("gpu0", "gpu7", 1e8) < two_sockets.transfer_s("gpu0", "gpu7", 1e8)


def test_dgx1_hybrid_cube_mesh() -> None:
    c = Cluster.preset("dgx1-v100")
    per_gpu = {i: 0 for i in range(8)}
    for x, y, n in DGX1_NVLINKS:
        per_gpu[x] += n
        per_gpu[y] += n
    assert set(per_gpu.values()) == {6}  # six NVLinks per V100
    assert c.route("gpu0", "gpu3").hops == ("gpu0", "gpu3")
    assert c.bottleneck_bandwidth("gpu0", "gpu3") == 2 * NVLINK2  # a doubled pair
    assert c.bottleneck_bandwidth("gpu0", "gpu1") == NVLINK2
    # No NVLink between 0 and 5: PCIe, then the QPI; never through another GPU.
    far = c.route("gpu0", "gpu5")
    assert far.hops[1:-1] == ("pcie0", "socket0", "socket1", "pcie2")
    assert far.bandwidth == QPI_P2P


def test_dgx_h100_nvswitch_gives_every_pair_full_bandwidth() -> None:
    c = Cluster.preset("dgx-h100")
    for a, b in (("gpu0", "gpu1"), ("gpu0", "gpu7"), ("gpu3", "gpu4")):
        assert c.route(a, b).hops == (a, "nvswitch", b)
        assert c.bottleneck_bandwidth(a, b) == NVLINK4_PER_GPU


def test_infiniband_route_between_hosts() -> None:
    c = Cluster.preset("2x8-v100-ib")
    r = c.route("h0/gpu2", "h1/gpu5")
    assert r.hops == ("h0/gpu2", "h0/pcie1", "h0/nic1", "ib", "h1/nic2", "h1/pcie2", "h1/gpu5")
    assert r.bandwidth == min(PCIE3_X16, IB_EDR)
    assert c.route("h0/gpu0", "h0/gpu3").hops == ("h0/gpu0", "h0/gpu3")  # NVLink inside a host


def test_same_device_route_is_free() -> None:
    c = star()
    r = c.route("d1", "d1")
    assert (r.hops, r.links, r.resources) == (("d1",), (), ())
    assert r.transfer_s(1e9) == 0.0
    assert r.bandwidth == float("inf")


def test_directions_are_separate_resources_unless_half_duplex() -> None:
    c = star()
    there, back = c.route("d0", "d1"), c.route("d1", "d0")
    assert set(there.resources).isdisjoint(back.resources)
    assert [c.resource_link(x).name for x in there.resources] == ["d0--sw", "d1--sw"]
    half = Cluster("half", [gpu("a"), gpu("b")], [Link("a", "b", "pcie", 1e9, duplex=False)])
    assert half.route("a", "b").resources == half.route("b", "a").resources


def test_route_passes_through_a_device_only_when_there_is_no_other_way() -> None:
    ring = Cluster("ring", [gpu(f"g{i}") for i in range(3)], [Link("g0", "g1", "nvlink", 25e9), Link("g1", "g2", "nvlink", 25e9)])
    assert ring.route("g0", "g2").hops == ("g0", "g1", "g2")


def test_unknown_device_in_route() -> None:
    with pytest.raises(PlacementError, match="no device 'd9'"):
        star().route("d0", "d9")


# -- heterogeneous --------------------------------------------------------------------------------
def test_heterogeneous_cluster_mixes_kinds_and_categories() -> None:
    c = Cluster(
        "mix",
        [gpu("v", kind="V100"), gpu("h", kind="H100"), Device("c", "cpu", "cpu", "h", {"float32": 1e12}, 1e11, 1e11),
         Device("t", "TPU-like", "accelerator", "h", {"bfloat16": 2e14}, 1e12, 3e10)],
        [Link(x, "sw", "pcie", 12e9) for x in ("v", "h", "c", "t")],
        [Switch("sw", "pcie_switch", "h")],
    )
    assert c.kinds() == ["V100", "H100", "cpu", "TPU-like"]
    assert c.device("t").peak("float32") == 2e14  # only dtype it has
    assert Cluster.from_dict(c.to_dict()) == c


# -- validation -----------------------------------------------------------------------------------
def _doc() -> dict:
    return star().to_dict()


@pytest.mark.parametrize(
    "edit, field, why",
    [
        (lambda d: d["devices"][2].update(memory_bytes=-1), r"devices\[2\]\.memory_bytes", "positive number"),
        (lambda d: d["devices"][1].update(category="tpu"), r"devices\[1\]\.category", "gpu, cpu, accelerator"),
        (lambda d: d["devices"][0].update(host="nowhere"), r"devices\[0\]\.host", "no host named 'nowhere'"),
        (lambda d: d["devices"][0]["peak_flops"].update(float16=0), r"devices\[0\]\.peak_flops\.float16", "positive"),
        (lambda d: d["devices"][0].update(peak_flops={}), r"devices\[0\]\.peak_flops", "non-empty"),
        (lambda d: d["devices"][1].update(memory_bytes="16GB"), r"devices\[1\]\.memory_bytes", "expected float"),
        (lambda d: d["devices"][1].update(speed=3), r"devices\[1\]\.speed", "unknown field"),
        (lambda d: d["devices"][1].pop("kind"), r"devices\[1\]\.kind", "missing"),
        (lambda d: d["devices"][1].update(name="d0"), r"devices\[1\]\.name", "duplicate name 'd0'"),
        (lambda d: d["links"][1].update(b="sw2"), r"links\[1\]\.b", "no device or switch named 'sw2'"),
        (lambda d: d["links"][0].update(bandwidth=0), r"links\[0\]\.bandwidth", "positive"),
        (lambda d: d["links"][0].update(latency_s=-1e-6), r"links\[0\]\.latency_s", ">= 0"),
        (lambda d: d["links"].append(dict(d["links"][0], name="again")), r"links\[3\]", "second link between"),
        (lambda d: d["links"].pop(), r"links", "device 'd2' .* is not connected"),
        (lambda d: d.update(version=7), r"version", "reads version 1"),
        (lambda d: d.update(schema="other"), r"schema", "expected 'graphc.cluster'"),
        (lambda d: d.update(devices=[]), r"devices", "at least one device"),
        (lambda d: d.update(extra=1), r"extra", "unknown field"),
    ],
)
def test_validation_names_the_bad_field(edit, field: str, why: str) -> None:
    doc = _doc()
    edit(doc)
    with pytest.raises(ClusterFormatError, match=rf"^c\.json: {field}: .*{why}"):
        Cluster.from_dict(doc, "c.json")


def test_load_reports_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ClusterFormatError, match="no such file"):
        Cluster.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'x': 1}")
    with pytest.raises(ClusterFormatError, match=r"bad.json: line 2: not valid JSON"):
        Cluster.load(bad)


def test_every_public_entry_takes_a_preset_name_a_file_or_a_cluster(tmp_path: Path) -> None:
    path = tmp_path / "box.json"
    Cluster.preset("pcie-4gpu").save(path)
    graph = load_benchmark("pipedream/alexnet.txt")
    alone = {n: "gpu0" for n in graph.node_names()}
    expected = simulate(graph, Cluster.preset("pcie-4gpu"), alone).step_ms
    for given in ("pcie-4gpu", path, str(path), Cluster.load(path)):
        assert Cluster.resolve(given).device_names == Cluster.preset("pcie-4gpu").device_names
        assert simulate(graph, given, alone).step_ms == expected
        assert lower_bound(graph, given).step_ms == lower_bound(graph, "pcie-4gpu").step_ms
        assert solve(graph, given, solver="single").cluster_name == "pcie-4gpu"
        assert CostModel(given).cluster.name == "pcie-4gpu"
    with pytest.raises(ConfigurationError, match="nosuchcluster"):
        solve(graph, "nosuchcluster", solver="single")
    with pytest.raises(TypeError, match="cluster must be a Cluster, a preset name or a cluster JSON file"):
        simulate(graph, 4, alone)


def test_constructor_validates_too() -> None:
    with pytest.raises(ClusterFormatError, match=r"devices\[1\]\.memory_bytes"):
        Cluster("c", [gpu("a"), gpu("b", memory=0)], [Link("a", "b", "pcie", 1e9)])


def test_placement_never_imports_torch() -> None:
    root = Path(__file__).resolve().parents[2] / "placement"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import torch|from torch)", text, re.MULTILINE), path.name
