"""The benchmark importers: every published file imports completely and faithfully, bad files fail clearly.

Counts and spot-checked values are read from the raw files here, independently of the importers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_training_graphs import synthetic_forward, training_file

from graphc.ir.errors import GraphFormatError
from graphc.ir.graph import Graph
from graphc.ir.importers import (
    load_benchmark,
    load_dnn_partitioning,
    load_expert_split,
    load_pipedream,
    shared_benchmarks_dir,
)

DEFAULT_BENCHMARKS = Path(__file__).resolve().parents[3].parent / "shared" / "benchmarks"
PIPEDREAM = ["alexnet", "vgg16", "inception_v3", "resnet50", "gnmt"]
DNN = [
    "latency/bert24_inference",
    "latency/resnet50_inference",
    "throughput/bert24_inference",
    "throughput/bert24_training",
    "throughput/resnet50_inference",
    "throughput/resnet50_training",
]
EXPERTS = {"bert24": "bert24_inference_expert", "resnet50": "resnet50_inference_expert"}


@pytest.fixture(scope="module")
def benchmarks() -> Path:
    try:
        return shared_benchmarks_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def pipedream_file(benchmarks: Path, stem: str) -> Path:
    return benchmarks / "pipedream" / f"{stem}.txt"


def dnn_file(benchmarks: Path, stem: str) -> Path:
    return benchmarks / "dnn-partitioning" / f"{stem}.json"


def raw_pipedream_layers(path: Path) -> dict[str, list[str]]:
    """Layer name -> [module repr, fwd, bwd, activation, params] as raw strings, by plain splitting."""
    layers = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("\t"):
            head, attrs = line.rsplit(" -- ", 1)
            name, op = head.split(" -- ", 1)
            layers[name] = [op] + [item.split("=")[1] for item in attrs.split(", ")]
    return layers


def raw_pipedream_edges(path: Path) -> list[tuple[str, str]]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.startswith("\t")]
    return [tuple(line.split(" -- ")) for line in lines if line]


# -- the published files ---------------------------------------------------------------------------


def test_default_location_is_next_to_the_repository(benchmarks: Path, monkeypatch) -> None:
    if not DEFAULT_BENCHMARKS.is_dir():
        pytest.skip(f"no benchmark folder at the default place {DEFAULT_BENCHMARKS}")
    monkeypatch.delenv("GRAPHC_BENCHMARKS", raising=False)
    assert shared_benchmarks_dir().resolve() == DEFAULT_BENCHMARKS.resolve()


def test_every_published_file_is_covered(benchmarks: Path) -> None:
    assert sorted(p.stem for p in (benchmarks / "pipedream").glob("*.txt") if p.stem != "LICENSE") == sorted(
        PIPEDREAM
    )
    found = (benchmarks / "dnn-partitioning").glob("*/*.json")
    assert sorted(f"{p.parent.name}/{p.stem}" for p in found if p.parent.name != "experts") == sorted(DNN)
    assert sorted(p.stem for p in (benchmarks / "dnn-partitioning" / "experts").glob("*.json")) == sorted(
        EXPERTS.values()
    )


@pytest.mark.parametrize("stem", PIPEDREAM)
def test_pipedream_counts_and_round_trip(benchmarks: Path, stem: str, tmp_path: Path) -> None:
    path = pipedream_file(benchmarks, stem)
    graph = load_pipedream(path)
    assert len(graph) == len(raw_pipedream_layers(path))
    assert graph.num_edges == len(raw_pipedream_edges(path))
    assert {(s, d) for s, d, _ in graph.edges()} == set(raw_pipedream_edges(path))
    assert graph.name == stem
    assert graph.meta["source"] == "pipedream" and graph.meta["file"] == path.name
    assert graph.meta["profiled_on"] == "V100"
    graph.save(tmp_path / "g.json")
    assert Graph.load(tmp_path / "g.json") == graph


@pytest.mark.parametrize("stem", PIPEDREAM)
def test_pipedream_every_node_matches_its_line(benchmarks: Path, stem: str) -> None:
    path = pipedream_file(benchmarks, stem)
    graph = load_pipedream(path, device_label="gpu0")
    for name, (op, fwd, bwd, activation, params) in raw_pipedream_layers(path).items():
        node = graph.node(name)
        sizes = [float(x) for x in activation.strip("[]").split(";")]
        assert node.op == op
        assert node.measured_ms == {"gpu0": float(fwd)}
        assert node.measured_bwd_ms == {"gpu0": float(bwd)}
        assert node.activation_bytes == node.output_bytes == sum(sizes)
        assert node.param_bytes == float(params)


def test_pipedream_alexnet_spot_check(benchmarks: Path) -> None:
    graph = load_pipedream(pipedream_file(benchmarks, "alexnet"))
    conv = graph.node("node2")
    assert conv.op == "Conv2d(3, 64, kernel_size=(11, 11), stride=(4, 4), padding=(2, 2))"
    assert conv.measured_ms == {"V100": 22.316}
    assert conv.measured_bwd_ms == {"V100": 6.405}
    assert conv.activation_bytes == conv.output_bytes == 198246400.0
    assert conv.param_bytes == 93184.0
    assert graph.edge("node1", "node2").bytes == 154140672.0  # node1's activation size
    assert graph.meta["input_nodes"] == ["node1"]
    assert graph.node("node1").measured_ms == {"V100": 635.902}  # data loading, kept as given
    assert graph.node_names() == [f"node{i}" for i in range(1, 24)]


def test_pipedream_gnmt_multi_output_layers(benchmarks: Path) -> None:
    graph = load_pipedream(pipedream_file(benchmarks, "gnmt"))
    assert graph.meta["input_nodes"] == ["node1", "node2", "node3"]
    lstm = graph.node("node7")
    assert lstm.op == "LSTM(2048, 1024)"
    assert lstm.activation_bytes == 6291456.0 + 2 * 131072.0
    assert graph.meta["output_sizes"]["node7"] == [6291456.0, 131072.0, 131072.0]
    first, second = graph.edge("node7", "node8"), graph.edge("node7", "node9")
    assert (first.bytes, first.output_index) == (6291456.0, 0)
    assert (second.bytes, second.output_index) == (131072.0, 1)
    assert graph.edge("node6", "node7").output_index is None
    assert graph.node("node5").op.startswith("EmuBidirLSTM(  (bidir): LSTM(1024, 1024, bidirectional=True)")


@pytest.mark.parametrize("stem", DNN)
def test_dnn_counts_and_round_trip(benchmarks: Path, stem: str, tmp_path: Path) -> None:
    path = dnn_file(benchmarks, stem)
    raw = json.loads(path.read_text())
    graph = load_dnn_partitioning(path)
    assert len(graph) == len(raw["nodes"])
    assert graph.num_edges == len(raw["edges"])
    objective = stem.split("/")[0]
    assert graph.meta["objective"] == objective
    assert graph.meta["max_accelerator_bytes"] == raw["maxSizePerFPGA"]
    assert graph.meta["max_accelerators"] == raw["maxFPGAs"]
    assert graph.meta["max_cpus"] == raw["maxCPUs"]
    assert graph.meta["training"] == stem.endswith("_training")
    graph.save(tmp_path / "g.json")
    assert Graph.load(tmp_path / "g.json") == graph


@pytest.mark.parametrize("stem", DNN)
def test_dnn_every_node_and_edge_matches_the_file(benchmarks: Path, stem: str) -> None:
    path = dnn_file(benchmarks, stem)
    raw = json.loads(path.read_text())
    graph = load_dnn_partitioning(path)
    name_of = {n["id"]: n["name"] for n in raw["nodes"]}
    for item in raw["nodes"]:
        node = graph.node(item["name"])
        assert graph.meta["node_ids"][item["name"]] == item["id"]
        assert node.measured_ms == {"cpu": item["cpuLatency"], "accelerator": item["fpgaLatency"]}
        assert node.memory_bytes == item["size"]
        assert node.is_backward == bool(item["isBackwardNode"])
        assert node.colocation_group == str(item["colorClass"])
        assert node.allowed_kinds == (None if item["supportedOnFpga"] else ["cpu"])
    for item in raw["edges"]:
        edge = graph.edge(name_of[item["sourceId"]], name_of[item["destId"]])
        assert edge.transfer_ms == {"accelerator-cpu": item["cost"]}
        assert edge.bytes == item["size"]


def test_dnn_resnet50_spot_check(benchmarks: Path) -> None:
    graph = load_dnn_partitioning(dnn_file(benchmarks, "latency/resnet50_inference"))
    node = graph.node("node77")
    assert node.measured_ms == {"cpu": 12.36, "accelerator": 1.236}
    assert node.memory_bytes == 205524992.0
    assert graph.edge("node77", "node78").transfer_ms == {"accelerator-cpu": 95.703125}
    assert graph.edge("node77", "node78").bytes == 205520896.0
    assert graph.meta["layer_ids"]["node77"] == 77
    training = load_dnn_partitioning(dnn_file(benchmarks, "throughput/resnet50_training"))
    grad = training.node("node77grad")
    assert grad.is_backward and grad.colocation_group == training.node("node77").colocation_group == "77"
    assert training.meta["node_ids"]["node77grad"] == 178
    assert training.meta["layer_ids"] == {}


def test_load_benchmark_dispatches_and_finds_shared_files(benchmarks: Path) -> None:
    assert load_benchmark("pipedream/vgg16.txt") == load_pipedream(pipedream_file(benchmarks, "vgg16"))
    json_path = dnn_file(benchmarks, "throughput/bert24_inference")
    assert load_benchmark(json_path) == load_dnn_partitioning(json_path)
    with pytest.raises(GraphFormatError, match="unknown graph format '.md': expected .txt"):
        load_benchmark(benchmarks / "README.md")
    with pytest.raises(GraphFormatError, match="load_expert_split"):
        load_benchmark(benchmarks / "dnn-partitioning" / "experts" / "bert24_inference_expert.json")


def test_load_benchmark_reads_graphc_graph_json_and_refuses_other_graphc_files(benchmarks: Path, tmp_path: Path) -> None:
    graph = load_benchmark("pipedream/alexnet.txt")
    graph.save(tmp_path / "g.json")
    assert load_benchmark(tmp_path / "g.json") == graph
    (tmp_path / "plan.json").write_text(json.dumps({"schema": "graphc.plan", "version": 1}))
    with pytest.raises(GraphFormatError, match=r"plan\.json: schema: expected 'graphc.graph', got 'graphc.plan'"):
        load_benchmark(tmp_path / "plan.json")
    with pytest.raises(GraphFormatError, match=r"nosuch\.json: cannot read the graph: no such file"):
        load_benchmark(tmp_path / "nosuch.json")


# -- expert splits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", DNN)
def test_expert_split_places_every_node(benchmarks: Path, stem: str) -> None:
    network = stem.split("/")[1].split("_")[0]
    expert = benchmarks / "dnn-partitioning" / "experts" / f"{EXPERTS[network]}.json"
    raw = json.loads(expert.read_text())
    graph = load_dnn_partitioning(dnn_file(benchmarks, stem))
    split = load_expert_split(expert, graph)
    assert list(split) == graph.node_names()
    for i, device in enumerate(raw["fpgas"]):
        for node_id in device["nodes"]:
            assert split[f"node{node_id}"] == f"accelerator:{i}"
            if graph.meta["training"]:
                assert split[f"node{node_id}grad"] == f"accelerator:{i}"  # colocated with its forward
    assert set(split.values()) == {f"accelerator:{i}" for i in range(len(raw["fpgas"]))}


def test_expert_split_errors(tmp_path: Path, benchmarks: Path) -> None:
    graph = load_dnn_partitioning(dnn_file(benchmarks, "throughput/bert24_inference"))
    bad = tmp_path / "expert.json"
    bad.write_text(json.dumps({"fpgas": [{"nodes": [1, 2]}, {"nodes": [3, 999]}], "cpus": []}))
    with pytest.raises(GraphFormatError, match=r"expert\.json: fpgas\[1\]\.nodes\[1\]: node id 999"):
        load_expert_split(bad, graph)
    bad.write_text(json.dumps({"fpgas": [{"nodes": [1, 2]}], "cpus": [{"nodes": [2]}]}))
    twice = r"cpus\[0\]\.nodes\[0\]: node id 2 is already placed at fpgas\[0\]"
    with pytest.raises(GraphFormatError, match=twice):
        load_expert_split(bad, graph)
    bad.write_text(json.dumps({"fpgas": [{"nodes": list(range(1, 31))}]}))
    with pytest.raises(GraphFormatError, match="does not place 2 node.*node31, node32"):
        load_expert_split(bad, graph)
    bad.write_text(json.dumps({"fpgas": [{"nodes": ["1"]}]}))
    with pytest.raises(GraphFormatError, match=r"fpgas\[0\]\.nodes\[0\]: expected a node id"):
        load_expert_split(bad, graph)
    with pytest.raises(GraphFormatError, match="node_ids"):
        load_expert_split(bad, load_pipedream(pipedream_file(benchmarks, "alexnet")))


def test_expert_split_cpu_devices(tmp_path: Path, benchmarks: Path) -> None:
    graph = load_dnn_partitioning(dnn_file(benchmarks, "throughput/bert24_inference"))
    split_file = tmp_path / "expert.json"
    doc = {"fpgas": [{"nodes": list(range(1, 31))}], "cpus": [{"nodes": [31, 32]}]}
    split_file.write_text(json.dumps(doc))
    split = load_expert_split(split_file, graph)
    assert split["node31"] == split["node32"] == "cpu:0" and split["node1"] == "accelerator:0"


# -- the benchmark folder --------------------------------------------------------------------------


def test_benchmarks_dir_env_var(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_BENCHMARKS", str(tmp_path))
    assert shared_benchmarks_dir() == tmp_path
    monkeypatch.setenv("GRAPHC_BENCHMARKS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="GRAPHC_BENCHMARKS"):
        shared_benchmarks_dir()


# -- malformed PipeDream files ---------------------------------------------------------------------


def layer(number: int, name: str = "", **attrs: str) -> str:
    """A PipeDream layer line; ``attrs`` replace (or, set to "", drop) the default attributes."""
    values = {"forward_compute_time": "1.0", "backward_compute_time": "2.0", "activation_size": "8.0",
              "parameter_size": "0.0", **attrs}  # fmt: skip
    listed = ", ".join(f"{key}={value}" for key, value in values.items() if value)
    return f"{name or f'node{number}'} -- ReLU() -- {listed}"


def layers(*numbers: int) -> list[str]:
    return [layer(n) for n in numbers]


@pytest.mark.parametrize(
    ("lines", "where", "why"),
    [
        (["garbage"], "line 1", "expected a layer line"),
        (layers(1) + [layer(2, forward_compute_time="abc")], "line 2", "forward_compute_time: expected a"),
        (layers(1) + [layer(2, forward_compute_time="nan")], "line 2", "finite non-negative"),
        (layers(1) + [layer(2, parameter_size="-1")], "line 2", "parameter_size: expected a finite non-neg"),
        ([layer(1, backward_compute_time="")], "line 1", "missing attribute.*backward_compute_time"),
        ([layer(1, flops="3")], "line 1", "unknown attribute 'flops'"),
        ([layer(1) + ", parameter_size=1.0"], "line 1", "given twice"),
        ([layer(1, name="layer1")], "line 1", "node<integer>"),
        ([layer(1, activation_size="[8.0; x]")], "line 1", "activation_size: expected a number"),
        ([layer(1, activation_size="[8.0; 4.0")], "line 1", "activation_size: expected '\\["),
        (layers(1, 2, 1), "line 3", "duplicate layer node1 \\(first on line 1\\)"),
        (layers(1, 2) + ["\tnode1 -- node2", "\tnode1 -- node2"], "line 4", "duplicate edge"),
        (layers(1, 2) + ["\tnode1 -- node3"], "line 3", "names node3, which no layer line declares"),
        (layers(1, 2) + ["\tnode1 -- node2", "\tnode2 -- node1"], "cycle", "node1 -- node2 \\(line 3\\)"),
        (layers(1) + ["\tnode1 -- node1"], "cycle", "line 2"),
        ([], "no layer lines", ""),
    ],
)
def test_malformed_pipedream(tmp_path: Path, lines: list[str], where: str, why: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GraphFormatError, match=rf"bad\.txt: .*{where}.*{why}"):
        load_pipedream(path)


def test_pipedream_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GraphFormatError, match="no such file"):
        load_pipedream(tmp_path / "nope.txt")


def test_pipedream_module_repr_with_separator(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_text(
        "node1 -- Input -- forward_compute_time=5.0, backward_compute_time=0.0, activation_size=4.0, "
        "parameter_size=0.0\nnode2 -- Weird(a -- b) -- forward_compute_time=1.0, backward_compute_time=2.0, "
        "activation_size=8.0, parameter_size=16.0\n\tnode1 -- node2\n"
    )
    graph = load_pipedream(path)
    assert graph.node("node2").op == "Weird(a -- b)"
    assert graph.edge("node1", "node2").bytes == 4.0
    assert graph.meta == {
        "source": "pipedream",
        "file": "odd.txt",
        "profiled_on": "V100",
        "input_nodes": ["node1"],
        "output_sizes": {},
    }


# -- malformed dnn-partitioning files --------------------------------------------------------------


def small_doc() -> dict:
    node = {"id": 1, "name": "node1", "supportedOnFpga": 1, "cpuLatency": 1.0, "fpgaLatency": 0.5,
            "isBackwardNode": 0, "colorClass": 1, "size": 10.0}  # fmt: skip
    return {
        "maxSizePerFPGA": 100.0,
        "maxFPGAs": 2,
        "maxCPUs": 1,
        "nodes": [node, {**node, "id": 2, "name": "node2", "colorClass": 2, "supportedOnFpga": 0}],
        "edges": [{"sourceId": 1, "destId": 2, "cost": 0.25, "size": 4.0}],
    }


def write_json(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_small_dnn_file(tmp_path: Path) -> None:
    graph = load_dnn_partitioning(write_json(tmp_path / "small.json", small_doc()))
    assert graph.node("node2").allowed_kinds == ["cpu"]
    assert graph.node("node1").allowed_kinds is None
    assert graph.meta["objective"] is None
    assert load_dnn_partitioning(tmp_path / "small.json", objective="latency").meta["objective"] == "latency"
    with pytest.raises(ValueError, match="objective"):
        load_dnn_partitioning(tmp_path / "small.json", objective="speed")


def test_dnn_optional_fields(tmp_path: Path) -> None:
    doc = small_doc()
    for key in ("name", "colorClass", "size"):
        del doc["nodes"][1][key]
    del doc["edges"][0]["size"]
    doc["nodes"][0]["isBackwardNode"] = True
    graph = load_dnn_partitioning(write_json(tmp_path / "small.json", doc))
    node = graph.node("node2")
    assert (node.colocation_group, node.memory_bytes) == (None, None)
    assert graph.edge("node1", "node2").bytes == 0.0
    assert graph.node("node1").is_backward


def _set(doc: dict, dotted: str, value: object) -> dict:
    """Set (or with value ... delete) the field at a path like ``nodes.0.cpuLatency``."""
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    target = doc
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("dotted", "value", "where", "why"),
    [
        ("nodes.1.cpuLatency", "fast", r"nodes\[1\]\.cpuLatency", "expected a finite non-negative number"),
        ("nodes.1.cpuLatency", True, r"nodes\[1\]\.cpuLatency", "number"),
        ("nodes.1.cpuLatency", float("nan"), r"nodes\[1\]\.cpuLatency", "number"),
        ("nodes.1.fpgaLatency", -2.0, r"nodes\[1\]\.fpgaLatency", "non-negative"),
        ("nodes.0.fpgaLatency", ..., r"nodes\[0\]\.fpgaLatency", "missing"),
        ("nodes.0.id", 1.5, r"nodes\[0\]\.id", "integer"),
        ("nodes.1.id", 1, r"nodes\[1\]\.id", r"duplicate id 1 \(also at nodes\[0\]\)"),
        ("nodes.1.name", "node1", r"nodes\[1\]\.name", "duplicate name"),
        ("nodes.0.isBackwardNode", 2, r"nodes\[0\]\.isBackwardNode", "true/false or 1/0"),
        ("nodes.0.supportedOnFpga", "yes", r"nodes\[0\]\.supportedOnFpga", "true/false or 1/0"),
        ("nodes.0.colour", 3, r"nodes\[0\]\.colour", "unknown field"),
        ("nodes.0", [1], r"nodes\[0\]", "expected a JSON object"),
        ("nodes", {}, "nodes", "expected a list"),
        ("nodes", [], "nodes", "at least one node"),
        ("maxFPGAs", 2.0, "maxFPGAs", "integer"),
        ("maxCPUs", ..., "maxCPUs", "missing"),
        ("extra", 1, "extra", "unknown field"),
        ("edges.0.destId", 7, r"edges\[0\]\.destId", "no node has id 7"),
        ("edges.0.cost", None, r"edges\[0\]\.cost", "number"),
        ("edges.0.sourceId", ..., r"edges\[0\]\.sourceId", "missing"),
        ("edges.1", {"sourceId": 1, "destId": 2, "cost": 0.0}, r"edges\[1\]", r"duplicate edge 1 -> 2"),
        ("edges.1", {"sourceId": 2, "destId": 1, "cost": 0.0}, "edges", r"cycle.*edges\[1\] \(2 -> 1\)"),
        ("edges.1", {"sourceId": 2, "destId": 2, "cost": 0.0}, "edges", "cycle"),
    ],
)
def test_malformed_dnn(tmp_path: Path, dotted: str, value: object, where: str, why: str) -> None:
    doc = small_doc()
    if dotted.startswith("edges.1"):
        doc["edges"].append(None)
    path = write_json(tmp_path / "bad.json", _set(doc, dotted, value))
    with pytest.raises(GraphFormatError, match=rf"bad\.json: {where}: .*{why}"):
        load_dnn_partitioning(path)


def test_dnn_cycle_names_every_edge_of_it(tmp_path: Path) -> None:
    # 1 -> 2 -> 3 -> 1 behind a node that is not on the cycle (0 -> 1): the message walks the cycle.
    doc = small_doc()
    doc["nodes"] += [{**doc["nodes"][0], "id": i, "name": f"node{i}", "colorClass": i} for i in (0, 3)]
    doc["edges"] = [{"sourceId": s, "destId": d, "cost": 0.0} for s, d in ((0, 1), (1, 2), (2, 3), (3, 1))]
    with pytest.raises(GraphFormatError, match=r"cycle: edges\[1\] \(1 -> 2\), edges\[2\] \(2 -> 3\), edges\[3\] \(3 -> 1\)$"):
        load_dnn_partitioning(write_json(tmp_path / "cycle.json", doc))


def test_operator_level_training_file(tmp_path: Path) -> None:
    # The shapes of the paper's operator files: backward-only colour classes, uncoloured backward nodes,
    # forward-to-backward edges; colour classes become colocation groups, backward nodes stay marked.
    doc = training_file(synthetic_forward(4, seed=2), seed=2)
    graph = load_dnn_partitioning(write_json(tmp_path / "ops_training.json", doc))
    assert graph.meta["training"] and len(graph.node_names()) == len(doc["nodes"])
    backward = {n["name"] for n in doc["nodes"] if n["isBackwardNode"]}
    assert {d.name for d in graph.nodes() if d.is_backward} == backward
    forward_groups = {d.colocation_group for d in graph.nodes() if not d.is_backward}
    orphans = {d.colocation_group for d in graph.nodes() if d.is_backward} - forward_groups
    assert orphans == {str(len(synthetic_forward(4, seed=2).names))}  # the loss class
    assert any(d.is_backward and d.colocation_group is None for d in graph.nodes())
    assert any(src not in backward and dst in backward for src, dst, _ in graph.edges())
    assert not any(src in backward and dst not in backward for src, dst, _ in graph.edges())
    assert {(s, d) for s, d, _ in graph.edges()} == {
        (doc["nodes"][e["sourceId"]]["name"], doc["nodes"][e["destId"]]["name"]) for e in doc["edges"]
    }


def test_dnn_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n "maxFPGAs": 2,\n "nodes": [,]\n}')
    with pytest.raises(GraphFormatError, match=r"bad\.json: line 3: not valid JSON"):
        load_dnn_partitioning(path)
    with pytest.raises(GraphFormatError, match="no such file"):
        load_dnn_partitioning(tmp_path / "missing.json")
    write_json(path, [1, 2])
    with pytest.raises(GraphFormatError, match="top level: expected a JSON object"):
        load_dnn_partitioning(path)


# -- property: any well-formed profile imports faithfully ------------------------------------------


@st.composite
def profiles(draw) -> tuple[list[tuple[int, float, float, float, float]], set[tuple[int, int]]]:
    count = draw(st.integers(1, 12))
    numbers = draw(st.permutations(range(1, count + 1)))  # file order is not node order
    value = st.floats(0, 1e9, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 3))
    layers = [(n, draw(value), draw(value), draw(value), draw(value)) for n in numbers]
    pairs = st.tuples(st.integers(1, count), st.integers(1, count)).filter(lambda p: p[0] < p[1])
    return layers, draw(st.sets(pairs, max_size=20))


@settings(max_examples=40, deadline=None)
@given(profiles())
def test_pipedream_property(tmp_path_factory, profile) -> None:
    layers, edges = profile
    lines = [
        f"node{n} -- Op{n}(x) -- forward_compute_time={f}, backward_compute_time={b}, "
        f"activation_size={a}, parameter_size={p}"
        for n, f, b, a, p in layers
    ]
    lines += [f"\tnode{s} -- node{d}" for s, d in sorted(edges, reverse=True)]
    path = tmp_path_factory.mktemp("prop") / "p.txt"
    path.write_text("\n".join(lines))
    graph = load_pipedream(path)
    assert graph.node_names() == [f"node{i}" for i in range(1, len(layers) + 1)]
    assert {(s, d) for s, d, _ in graph.edges()} == {(f"node{s}", f"node{d}") for s, d in edges}
    activation = {n: a for n, _, _, a, _ in layers}
    for s, d, edge in graph.edges():
        assert edge.bytes == activation[int(s[4:])]
    for n, f, b, a, p in layers:
        node = graph.node(f"node{n}")
        assert (node.measured_ms["V100"], node.measured_bwd_ms["V100"]) == (f, b)
        assert (node.output_bytes, node.param_bytes) == (a, p)
