"""Every CLI command runs on a small model and says clearly what was wrong with bad input."""

from __future__ import annotations

import json

import pytest

from graphc.cli import main
from placement.plan import Plan


def test_trace_and_import_print_and_save_graphs(tmp_path, capsys):
    assert main(["trace", "gpt2", "--size", "small", "-o", str(tmp_path / "g.json")]) == 0
    assert "cost graph 'gpt2'" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text())["schema"] == "graphc.graph"
    assert main(["import", "pipedream/alexnet.txt"]) == 0
    assert "measured on V100" in capsys.readouterr().out


def test_plan_then_show_writes_plan_trace_and_pictures(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    assert main(["plan", "resnet50", "--size", "small", "-b", "2", "-c", "pcie-4gpu", "-s", "m-etf", "-o", str(plan_path)]) == 0
    assert "predicted step" in capsys.readouterr().out
    plan = Plan.load(plan_path)
    assert plan.solver == "m-etf" and plan.graph is not None and plan.cluster.name == "pcie-4gpu"
    trace, gantt, dot = tmp_path / "t.json", tmp_path / "g.png", tmp_path / "d.dot"
    assert main(["show", str(plan_path), "--trace", str(trace), "--gantt", str(gantt), "--dot", str(dot)]) == 0
    assert json.loads(trace.read_text())["traceEvents"]
    assert gantt.read_bytes().startswith(b"\x89PNG") and dot.read_text().startswith("digraph")


def test_compare_writes_markdown_csv_and_chart(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--models", "alexnet,pipedream/alexnet.txt", "--clusters", "pcie-4gpu",
            "--solvers", "single,m-etf", "-t", "2", "--out-dir", str(out), "-b", "2"]  # fmt: skip
    assert main(argv) == 0
    markdown = (out / "compare.md").read_text()
    assert markdown.count("| alexnet |") == 2 and markdown.count("| alexnet (pipedream)") == 2
    assert len((out / "compare.csv").read_text().splitlines()) == 5
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["trace", "nosuch.py:Model"], "no such file 'nosuch.py'"),
        (["trace", "notamodel"], "expected a zoo name"),
        (["show", "missing.json"], "cannot read the plan"),
        (["plan", "alexnet", "-c", "nosuch-cluster"], "nosuch-cluster"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
