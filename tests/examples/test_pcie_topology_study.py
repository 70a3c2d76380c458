"""examples/pcie_topology_study.py, the Big Sur data-parallel study: its step differences between wirings
equal the ring all-reduce's textbook time computed by hand, the bottleneck it names is the link that makes
them, and a run writes the talk's table as JSON."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

from graphc import trace, zoo
from placement import Cluster
from placement.presets import LINK_LATENCY_S, PCIE3_X16, QPI_P2P
from placement.sync import AllReduceSync

ROOT = Path(__file__).resolve().parents[2]


def load_study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pcie_topology_study", ROOT / "examples" / "pcie_topology_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


study = load_study()


@pytest.fixture(scope="module")
def graph():
    zm = zoo.build("alexnet", batch_size=16, size="small", device="meta", batch_norm=True)
    return trace(zm.model, zm.example_inputs, granularity="module", name="alexnet-bn").graph


@pytest.fixture(scope="module")
def after_backward(graph):
    """The three wirings, one ring all-reduce of every gradient after the backward."""
    return study.study_network(graph, AllReduceSync("ring", None), "M40")


def test_the_plan_is_one_stage_replicated_on_the_eight_gpus(graph) -> None:
    cluster = Cluster.preset("pcie-8gpu-two-sockets", kind="M40")
    plan = study.data_parallel_plan(graph, cluster, AllReduceSync())
    assert len(plan.stages) == 1 and plan.stages[0].devices == [f"gpu{i}" for i in range(8)]
    assert set(plan.stages[0].nodes) == set(graph.node_names()) and plan.microbatches == 8


def test_wirings_differ_by_the_ring_all_reduce_computed_by_hand(graph, after_backward) -> None:
    # Same GPUs, same compute: the steps differ only by the all-reduce after the backward,
    # 2 (r - 1) rounds of the slowest edge's latency + 2 (r - 1) / r x P over its bandwidth.
    # A's and D's rings cross 4 PCIe links between the halves (4 us, 12 GB/s); E's 5, one the QPI (9 GB/s).
    r, params = 8, graph.total_param_bytes()

    def ring_ms(latency_s: float, bandwidth: float) -> float:
        return 1e3 * (2 * (r - 1) * latency_s + 2 * (r - 1) / r * params / bandwidth)

    a, d, e = (after_backward[k] for k in "ADE")
    assert a.compute_ms == d.compute_ms == e.compute_ms
    assert d.step_ms == pytest.approx(a.step_ms, rel=1e-12)
    pcie, qpi = ring_ms(4 * LINK_LATENCY_S, PCIE3_X16), ring_ms(5 * LINK_LATENCY_S, QPI_P2P)
    assert e.step_ms - a.step_ms == pytest.approx(qpi - pcie, rel=1e-9)
    assert study.speedup(after_backward, "D", "E") == pytest.approx(e.step_ms / d.step_ms - 1)
    assert study.speedup(after_backward, "E", "A") < 0 < study.speedup(after_backward, "D", "E")


def test_the_bottleneck_is_the_qpi_on_e_and_a_pcie_link_on_a_and_d(graph, after_backward) -> None:
    # Each ring edge carries 2 (r - 1) / r x P bytes each way; E's two edges between the halves cross
    # the QPI, one each way; A's and D's cross only 12 GB/s PCIe links, each carrying one edge each way.
    ring_bytes = 2 * 7 / 8 * graph.total_param_bytes()
    e = after_backward["E"].bottleneck
    assert (e.link, e.kind, e.bandwidth) == ("socket0--socket1", "qpi", QPI_P2P)
    assert e.wire_ms == pytest.approx(1e3 * ring_bytes / QPI_P2P, rel=1e-9)
    assert e.phase_ms == pytest.approx(e.wire_ms + 1e3 * 14 * 5 * LINK_LATENCY_S, rel=1e-9)
    for letter in "AD":
        b = after_backward[letter].bottleneck
        assert (b.kind, b.bandwidth) == ("pcie", PCIE3_X16)
        assert b.wire_ms == pytest.approx(1e3 * ring_bytes / PCIE3_X16, rel=1e-9)
    assert study.cause(after_backward, "D", "E") == "E's qpi 9 GB/s (socket0--socket1) against D's pcie 12 GB/s"
    assert study.cause(after_backward, "D", "A").startswith("none")


def test_hierarchical_on_two_sockets_is_paced_by_the_leaders_ring_over_the_qpi(graph) -> None:
    # Islands of two GPUs per switch: the four leaders' ring, 2 (4 - 1) / 4 x P each way between the
    # sockets, is the longest phase; the chains inside the islands carry P over 12 GB/s.
    results = study.study_network(graph, AllReduceSync("hierarchical", None), "M40")
    e = results["E"].bottleneck
    assert (e.link, e.kind) == ("socket0--socket1", "qpi")
    assert e.wire_ms == pytest.approx(1e3 * 1.5 * graph.total_param_bytes() / QPI_P2P, rel=1e-9)
    assert results["A"].bottleneck.kind == "pcie"
    assert results["E"].step_ms > results["A"].step_ms == results["D"].step_ms


def test_buckets_overlap_the_all_reduce_with_the_backward(graph, after_backward) -> None:
    # 256 KiB buckets: the classifier's gradients (most of the 1.3 MB) all-reduce while the convolutions
    # run their backward.
    bucketed = study.study_network(graph, AllReduceSync("ring", 2**18), "M40")
    for letter in "ADE":
        assert bucketed[letter].compute_ms == after_backward[letter].compute_ms
        assert bucketed[letter].step_ms < after_backward[letter].step_ms


@pytest.mark.slow
def test_the_study_writes_the_talks_table(tmp_path: Path) -> None:
    quiet = Console(file=io.StringIO())
    doc = study.data_parallel_study([AllReduceSync("ring", None)], "M40", tmp_path, quiet)
    saved = json.loads((tmp_path / "data_parallel.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    rows = saved["settings"][0]["rows"]
    assert [row["network"] for row in rows] == ["AlexNet with batch norm", "VGG", "vggstress", "GoogLeNet"]
    for row in rows:
        assert set(row["speedups"]) == set(row["talk"]) == {"E/A", "D/A", "D/E"}
        assert row["wirings"]["E"]["bottleneck"]["kind"] == "qpi"
    vgg, stress = rows[1], rows[2]
    assert stress["param_bytes"] > 2 * vgg["param_bytes"]
    assert stress["speedups"]["D/E"] > vgg["speedups"]["D/E"] > 0  # more to synchronise, more effect
