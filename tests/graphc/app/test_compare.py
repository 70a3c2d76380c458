"""graphc.app.compare: the summary table, the README block, and bad input."""

from __future__ import annotations

import math

import pytest
from cpu_burners import cpu_burners
from PIL import Image
from rich.console import Console

from graphc.app.compare import (
    CHART_MAX_WIDTH_PX,
    README_BEGIN,
    README_END,
    Row,
    bar_chart,
    chart_figure,
    chart_ratios,
    compare,
    plan_digest,
    replace_readme_block,
    summary_grid,
    summary_tables,
    to_summary_markdown,
)
from graphc.ir.errors import GraphcError
from graphc.ir.importers import benchmark_files, load_benchmark
from placement.solvers import solve


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
                   time_limit_s=2.0, quiet=True)  # fmt: skip
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


SOLVERS = ["single", "round-robin", "m-topo", "m-etf", "m-sct", "heft", "critical-path", "auto"]


def _readme_shaped_rows(worst: float = 20.0) -> list[Row]:
    """The README's shape: 17 graphs (long names among them) on 2 clusters, 8 latency solvers and the
    pipelined plan; ratios from 1.0 to ``worst``; one solver without a plan."""
    rows = []
    for g in range(17):
        graph = f"resnet50_inference{g} (dnn-partitioning throughput)" if g % 3 else f"net{g}"
        for cluster in ("pcie-4gpu", "dgx1-v100"):
            for k, solver in enumerate(SOLVERS):
                if (g, cluster, solver) == (5, "dgx1-v100", "single"):
                    rows.append(Row(graph, cluster, "latency", solver, math.nan, math.nan, math.nan, None, 0.0, 0, error="no fit"))
                    continue
                ratio = 1.0 + (worst - 1.0) * ((g * 8 + k) % 37) / 36
                rows.append(Row(graph, cluster, "latency", solver, 100.0 * ratio, 100.0, ratio, None, 1.0, 4))
            rows.append(Row(graph, cluster, "throughput", "pipeline", 40.0, 35.0, 40 / 35, None, 1.0, 4, 3, 32))
    return rows


def test_chart_of_the_readme_rows_is_readable_width_on_a_log_axis(tmp_path):
    rows = _readme_shaped_rows()
    bar_chart(rows, tmp_path / "compare.png")
    width, height = Image.open(tmp_path / "compare.png").size
    assert width <= CHART_MAX_WIDTH_PX and height <= 3000
    fig = chart_figure(rows)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["pcie-4gpu", "dgx1-v100"]
    assert all(ax.get_xscale() == "log" for ax in panels)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*SOLVERS, "pipeline", "no plan found"]


def test_chart_of_close_ratios_stays_linear_and_shows_no_missing_entry():
    rows = [r for r in _readme_shaped_rows(worst=1.5) if not r.error]
    fig = chart_figure(rows)
    assert fig.axes[0].get_xscale() == "linear"
    assert "no plan found" not in [t.get_text() for t in fig.legends[0].get_texts()]


def test_chart_divides_by_the_best_latency_bound_like_the_summary():
    rows = [_row("g1", "single", 200.0, 90.0), _row("g1", "auto", 120.0, 100.0),
            _row("g1", "pipeline", 80.0, 40.0, objective="throughput", stages=2, microbatches=4),
            _row("g2", "pipeline", 80.0, 40.0, objective="throughput", stages=2, microbatches=4)]  # fmt: skip
    ratios = chart_ratios(rows)
    assert ratios["g1", "c", "single"] == 2.0 and ratios["g1", "c", "auto"] == 1.2
    assert ratios["g1", "c", "pipeline"] == 0.8  # the same batch's step, over the same bound
    assert ratios["g2", "c", "pipeline"] == 2.0  # no latency bound: its own


def test_console_summary_fits_100_columns_with_every_name_and_number_whole():
    rows = _readme_shaped_rows()
    console = Console(width=100, record=True)
    console.print(summary_tables(rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100 and "…" not in text
    words = set(text.split())
    header, body, closing = summary_grid(rows)
    for line in body:
        for cell, _ in line:
            assert set(cell.split()) <= words, cell  # wrapped at spaces at most, never cut
    assert closing in " ".join(text.split())


def test_plan_digest_tells_plans_apart_and_ignores_timings() -> None:
    g = load_benchmark("pipedream/vgg16.txt")
    first = solve(g, "pcie-4gpu", solver="m-etf")
    again = solve(g, "pcie-4gpu", solver="m-etf")
    again.solve_seconds = first.solve_seconds + 1.0
    assert plan_digest(first) == plan_digest(again)
    assert plan_digest(first) != plan_digest(solve(g, "pcie-4gpu", solver="single"))


def _two_runs(objective: str, time_limit_s: float) -> tuple[list[Row], list[Row]]:
    """The same comparison on a quiet machine and beside two CPU burners."""
    run = dict(graphs=["pipedream/vgg16.txt", "pipedream/gnmt.txt"], clusters=["pcie-4gpu"], solvers=["m-etf", "auto"],
               objectives=(objective,), time_limit_s=time_limit_s, quiet=True)  # fmt: skip
    quiet = compare(**run)
    with cpu_burners(2):
        loaded = compare(**run)
    return quiet, loaded


@pytest.mark.slow
def test_two_runs_of_compare_choose_the_same_latency_plans_one_beside_cpu_burners() -> None:
    """Every latency row's plan (by its digest) is the same on a quiet machine and beside two CPU
    burners, and no row was cut by the wall clock (auto plans half its time limit: this holds while
    the burners at most double its time, on a machine otherwise idle)."""
    quiet, loaded = _two_runs("latency", 3.0)
    assert len(quiet) == 4 and not any(r.error for r in quiet)
    assert [(r.graph, r.solver, r.plan_digest) for r in quiet] == [(r.graph, r.solver, r.plan_digest) for r in loaded]
    assert all(r.plan_digest and not r.wall_clock_stops for r in quiet + loaded)


@pytest.mark.slow
def test_two_runs_of_compare_choose_the_same_pipelined_plans_one_beside_cpu_burners() -> None:
    """Every pipelined row's plan is the same on a quiet machine and beside two CPU burners, and no row
    was cut by the wall clock: the pipeline solver's CP-SAT runs on deterministic time and its exact DP
    on counted work (GNMT's 7,874 ideals fit the work of 3 s), the clock only a safety net far above."""
    quiet, loaded = _two_runs("throughput", 6.0)
    assert len(quiet) == 2 and not any(r.error for r in quiet + loaded)
    assert [(r.graph, r.plan_digest) for r in quiet] == [(r.graph, r.plan_digest) for r in loaded]
    assert all(r.plan_digest and not r.wall_clock_stops for r in quiet + loaded)
