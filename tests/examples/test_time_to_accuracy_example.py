"""examples/time_to_accuracy.py on a small convergence file: the digits MLP's parameters are the 2410 the
steps were measured with, every strategy's time is its steps times its step, the Ethernet finding agrees
with the numbers it quotes, and a run writes the JSON and the markdown summary."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from placement import Cluster
from placement.time_to_accuracy import runs_from_convergence

ROOT = Path(__file__).resolve().parents[2]


def load_example() -> ModuleType:
    sys.path.insert(0, str(ROOT / "examples"))  # its sibling elastic_convergence, as when run as a script
    spec = importlib.util.spec_from_file_location("time_to_accuracy_example", ROOT / "examples" / "time_to_accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


def curve(name: str, kind: str, period: int, reached: int, **extra) -> dict:
    """A run of 2 workers that first reaches 90% at step ``reached`` (and 95% never)."""
    history = [{"step": s, "accuracy": 0.92 if s >= reached else 0.5, "bytes": 0.0} for s in range(20, 201, 20)]
    return {"name": name, "kind": kind, "period": period, "workers": 2, "history": history, **extra}


CONVERGENCE = {
    "settings": {"targets": [0.9, 0.95]},
    "curves": [
        curve("sync SGD", "local", 1, 100),
        curve("EAMSGD tau=10", "eamsgd", 10, 100),
        curve("async EASGD tau=10 p=5", "async", 10, 160, prefetch=5),
        curve("DiLoCo H=10", "diloco", 10, 120),
    ],
}


def test_rows_price_the_digits_mlp_and_the_finding_quotes_its_numbers() -> None:
    runs = runs_from_convergence(CONVERGENCE)
    (row,) = example.rows_for("digits MLP", Cluster.preset("8x1-v100-1gbe"), runs, [0.9, 0.95])
    assert (row["tier"], row["workers"], row["param_bytes"]) == ("across hosts", 2, 2410 * 4)
    assert row["devices"] == ["h0/gpu0", "h1/gpu0"] and row["servers"] == ["h0/cpu0", "h1/cpu0"]
    at90 = row["targets"]["0.9"]
    for e in at90["estimates"]:
        assert e["seconds"] == pytest.approx(e["steps"] * e["step_ms"] / 1e3)
    by_name = {e["name"]: e for e in at90["estimates"]}
    sgd, eamsgd = by_name["sync SGD"], by_name["EAMSGD tau=10"]
    assert eamsgd["bytes_per_step"] == pytest.approx(sgd["bytes_per_step"] / 10)
    # Same steps (100), so the links alone decide: on 1 GbE the exchange every 10 steps wins.
    assert eamsgd["step_ms"] < sgd["step_ms"] and at90["choice"]["chosen"] == "EAMSGD tau=10"
    assert at90["finding"].startswith("yes: EAMSGD tau=10 reaches 90% in")
    assert "At the same step count, EAMSGD tau=10" in at90["finding"]
    assert at90["finding"].count(f"{sgd['seconds']:.3g} s") >= 1 and f"{eamsgd['seconds']:.3g} s" in at90["finding"]


def test_a_run_writes_json_and_the_markdown_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    convergence = tmp_path / "convergence.json"
    convergence.write_text(json.dumps(CONVERGENCE))
    argv = ["time_to_accuracy.py", "--convergence", str(convergence), "--out", str(tmp_path / "out"),
            "--models", "digits MLP", "--clusters", "dgx1-v100,8x1-v100-1gbe", "--workers", "2", "--target", "0.9"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    example.main()
    doc = json.loads((tmp_path / "out" / "time_to_accuracy.json").read_text())
    assert [(r["cluster"], r["tier"]) for r in doc["rows"]] == [("dgx1-v100", "inside a host"), ("8x1-v100-1gbe", "across hosts")]
    summary = (tmp_path / "out" / "time_to_accuracy.md").read_text().splitlines()
    assert len(summary) == 4 and summary[3].startswith("| digits MLP | 8x1-v100-1gbe | across hosts |")
    assert summary[3].endswith("| EAMSGD tau=10: " + f"{by_seconds(doc, 'EAMSGD tau=10')} (100 steps) |")


def by_seconds(doc: dict, name: str) -> str:
    """The seconds of ``name`` at 90% in the last row of ``doc``, as the summary prints them."""
    (e,) = [e for e in doc["rows"][-1]["targets"]["0.9"]["estimates"] if e["name"] == name]
    return f"{e['seconds']:.3g} s" if e["seconds"] >= 0.1 else f"{1e3 * e['seconds']:.3g} ms"


def test_a_missing_convergence_file_says_which_script_makes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy.py", "--convergence", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit, match="run examples/elastic_convergence.py"):
        example.main()
