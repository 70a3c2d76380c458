"""The README's quickstart, as a new user copies it: it runs, and examples/quickstart.py is the same code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from placement.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quickstart") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Quickstart section has no ```python block"
    return match.group(1)


def test_examples_quickstart_is_the_readme_quickstart():
    assert (ROOT / "examples" / "quickstart.py").read_text().endswith(_quickstart_block())


def test_readme_quickstart_runs_as_written(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(_quickstart_block())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"GRAPHC_PROGRESS": "0", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predicted step" in done.stdout and "['cpu0', 'cpu1']" in done.stdout  # the towers side by side
    plan = Plan.load(tmp_path / "plan.json")
    assert sorted(plan.devices_used()) == ["cpu0", "cpu1"] and plan.predicted_step_ms > 0
