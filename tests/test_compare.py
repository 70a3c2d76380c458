"""graphc.compare: the summary table, the README block, and bad input."""

from __future__ import annotations

import math

import pytest

from graphc.compare import (
    README_BEGIN,
    README_END,
    Row,
    compare,
    replace_readme_block,
    to_summary_markdown,
)
from graphc.errors import GraphcError
from graphc.importers import benchmark_files


def _row(graph, solver, step, bound, objective="latency", error="", stages=0, microbatches=1):
    nan = math.nan
    if error:
        return Row(graph, "c", objective, solver, nan, nan, nan, None, 0.0, 0, error=error)
    return Row(graph, "c", objective, solver, step, bound, step / bound, 1 - bound / step, 0.1, 2, stages, microbatches)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_summary_uses_the_best_bound_bolds_the_best_and_averages_geometrically():
    rows = [
        _row("g1", "single", 200.0, 90.0),
        _row("g1", "m-etf", 150.0, 90.0),
        _row("g1", "auto", 120.0, 100.0),  # auto proved a better bound: every cell divides by 100
        _row("g1", "pipeline", 80.0, 40.0, objective="throughput", stages=2, microbatches=4),
        _row("g2", "single", 50.0, 50.0),
        _row("g2", "m-etf", 0, 0, error="does not fit"),
        _row("g2", "auto", 50.0, 50.0),
        _row("g2", "pipeline", 0, 0, objective="throughput", error="the plan does not fit in memory: gpu0 needs 13 GiB"),
    ]
    lines = to_summary_markdown(rows).splitlines()
    assert _cells(lines[0]) == ["graph", "cluster", "bound (ms)", "single", "m-etf", "auto", "auto step (ms)",
                                "auto gap", "pipeline step (ms)", "stages x mb"]  # fmt: skip
    g1, g2, means = _cells(lines[2]), _cells(lines[3]), _cells(lines[4])
    assert g1 == ["g1", "c", "100.00", "2.000", "1.500", "**1.200**", "120.00", "16.7%", "80.00", "2 x 4"]
    assert g2[:6] == ["g2", "c", "50.00", "**1.000**", "—", "**1.000**"]
    assert g2[-2:] == ["—", "none: the plan does not fit in memory"]
    assert means[3] == f"{math.sqrt(2.0 * 1.0):.3f}" and means[4] == "1.500" and means[5] == f"{math.sqrt(1.2):.3f}"
    auto_line = next(line for line in lines if line.startswith("auto / best other solver"))
    assert f"{math.sqrt(120 / 150 * 1.0):.3f}" in auto_line and "over 2 rows" in auto_line


def test_summary_of_pipelined_plans_alone_has_no_latency_bound():
    rows = [_row("g1", "pipeline", 80.0, 40.0, objective="throughput", stages=2, microbatches=4)]
    lines = to_summary_markdown(rows).splitlines()
    assert _cells(lines[0]) == ["graph", "cluster", "bound (ms)", "pipeline step (ms)", "stages x mb"]
    assert _cells(lines[2]) == ["g1", "c", "—", "80.00", "2 x 4"]


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    replace_readme_block(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{README_BEGIN}\n| new |\n{README_END}\nafter\n"
    replace_readme_block(readme, "| newer |")
    assert readme.read_text() == f"intro\n{README_BEGIN}\n| newer |\n{README_END}\nafter\n"


def test_readme_without_markers_is_refused_with_what_to_add(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(GraphcError, match="needs the lines"):
        replace_readme_block(readme, "x")
    assert readme.read_text() == "no markers here\n"


@pytest.mark.parametrize(
    "kwargs,message",
    [({"objectives": ["speed"]}, "unknown objective"), ({"clusters": ["nosuch"]}, "nosuch")],
)
def test_bad_objective_or_cluster_fails_before_solving(kwargs, message):
    args = {"graphs": ["pipedream/alexnet.txt"], "clusters": ["pcie-4gpu"], "solvers": ["single"], **kwargs}
    with pytest.raises(GraphcError, match=message):
        compare(quiet=True, **args)


def test_throughput_objective_adds_one_pipelined_plan_per_graph_and_cluster():
    rows = compare(["pipedream/alexnet.txt"], ["pcie-4gpu"], ["single", "m-etf"], objectives=["latency", "throughput"],
                   time_limit=2.0, quiet=True)  # fmt: skip
    assert [(r.objective, r.solver) for r in rows] == [("latency", "single"), ("latency", "m-etf"), ("throughput", "pipeline")]
    pipelined = rows[-1]
    assert not pipelined.error and pipelined.stages >= 1 and pipelined.microbatches >= 1
    assert pipelined.step_ms >= pipelined.bound_ms * (1 - 1e-9)
    assert pipelined.found_by.startswith("pipeline")


def test_benchmark_files_list_every_published_graph_and_no_expert_split():
    files = benchmark_files()
    assert "pipedream/vgg16.txt" in files and "dnn-partitioning/throughput/resnet50_training.json" in files
    assert not any("expert" in f or "LICENSE" in f for f in files)
    assert all("throughput" not in f for f in benchmark_files(throughput=False))
