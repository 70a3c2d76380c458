"""The README's quickstart, as a new user copies it: it runs, and examples/quickstart.py is the same code;
its command lines are ones the CLI accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from graphc.app.cli import build_parser
from placement.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


def _python_block(heading: str) -> str:
    """The first ```python block of the README section ``heading``."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(f"## {heading}") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"the README's {heading} section has no ```python block"
    return match.group(1)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "snippet.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], check=False, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"GRAPHC_PROGRESS": "0", "PATH": "/usr/bin:/bin"})  # fmt: skip


def _quickstart_block() -> str:
    return _python_block("Quickstart")


def test_examples_quickstart_is_the_readme_quickstart():
    assert (ROOT / "examples" / "quickstart.py").read_text().endswith(_quickstart_block())


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path):
    done = _run(_quickstart_block(), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predicted step" in done.stdout and "['cpu0', 'cpu1']" in done.stdout  # the towers side by side
    plan = Plan.load(tmp_path / "plan.json")
    assert sorted(plan.devices_used()) == ["cpu0", "cpu1"] and plan.predicted_step_ms > 0


@pytest.mark.slow
def test_readme_tracing_then_running_a_placed_model_run_as_written(tmp_path):
    done = _run(_python_block("Tracing a model") + _python_block("Running placed models"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "S(" in done.stdout and "AR" in done.stdout  # the printed 1F1B schedule with the all-reduce
    assert "'cpu0': ['F0', 'B0', 'F2', 'B2', 'AR', 'OPT']" in done.stdout  # the order the first replica ran
    assert (tmp_path / "resnet50.json").is_file()


def test_readme_benchmark_snippet_runs_as_written(tmp_path):
    done = _run(_python_block("Published benchmark graphs"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accelerator:0" in done.stdout


def test_readme_cluster_and_simulator_snippet_runs_as_written(tmp_path):
    done = _run(_python_block("Clusters, costs and the simulator"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lower bound (training" in done.stdout


def test_readme_command_lines_are_accepted_by_the_cli():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Command line") :]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block, "the README's Command line section has no ``` block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]
    assert {words[1] for words in lines} >= {"demo", "presets", "solvers", "trace", "import", "plan", "show", "compare", "run"}
    parser = build_parser()
    for words in lines:
        assert words[0] == "graphc"
        parser.parse_args(words[1:])  # exits 2 on an option the CLI does not have or a bad value
