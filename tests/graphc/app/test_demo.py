"""The demo's verdict against one worker (issue 12 item 6): the plan measured next to the single-device plan,
said plainly either way. The whole demo runs in tests/graphc/app/test_cli.py (slow, distributed)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from graphc.app.demo import DemoResult


def result(devices: list[str], measured: float | None, single: float | None, predicted: float = 40.0, predicted_single: float = 50.0) -> DemoResult:
    fields = {f.name: None for f in dataclasses.fields(DemoResult)}
    plan = SimpleNamespace(devices_used=lambda: devices)
    return DemoResult(**{
        **fields, "plan": plan, "measured_ms": measured, "eager_all_cores_ms": 30.0, "cores": 2, "predicted_ms": predicted,
        "single_device_ms": single, "single_device_predicted_ms": predicted_single,
    })  # fmt: skip


@pytest.mark.parametrize("measured, single, beats", [(40.0, 50.0, True), (50.0, 50.0, True), (60.0, 50.0, False), (None, 50.0, None), (40.0, None, None)])
def test_the_plan_beats_one_device_when_measured_no_slower(measured, single, beats):
    assert result(["cpu0", "cpu1"], measured, single).beats_one_device is beats


def test_the_verdict_says_how_the_plan_did_against_one_worker_measured_and_predicted():
    faster = result(["cpu0", "cpu1"], 40.0, 50.0).verdict()
    assert faster.startswith("placement does not pay here: eager PyTorch on all 2 cores is 1.33x as fast as the placed step.")
    assert faster.endswith("Against one worker, the plan on 2 workers is 1.25x as fast (predicted 1.25x).")
    slower = result(["cpu0", "cpu1"], 60.0, 50.0, predicted=45.0).verdict()
    assert slower.endswith(
        "Against one worker, the plan on 2 workers is slower: 1.20x the single-device step (predicted 1.11x); here the model was wrong."
    )


def test_the_verdict_says_when_the_model_keeps_one_worker_or_one_device_was_not_measured():
    kept = result(["cpu0"], 50.0, 50.0).verdict()
    assert kept.endswith("by the model, a second worker does not pay for this network and batch.")
    assert result(["cpu0", "cpu1"], 40.0, None).verdict().endswith("The single-device plan was not measured.")


def test_a_machine_slower_than_its_cached_calibration_is_said_with_how_to_measure_again():
    slow = result(["cpu0", "cpu1"], 60.0, 65.0, predicted_single=50.0)
    assert slow.machine_drift == pytest.approx(0.3)
    warning = slow.drift_warning("calibration.json, measured 2026-12-07T17:03")
    assert warning.startswith("this machine runs 30% slower than when it was calibrated (calibration.json, measured 2026-12-07T17:03)")
    assert "65.0 ms against 50.0 ms" in warning and "GRAPHC_CACHE" in warning
    assert result(["cpu0", "cpu1"], 40.0, 41.0, predicted_single=40.0).drift_warning("c") is None  # 2.5%: no line
    assert "faster" in result(["cpu0", "cpu1"], 30.0, 40.0, predicted_single=50.0).drift_warning("c")
    assert result(["cpu0", "cpu1"], 40.0, None).drift_warning("c") is None  # not measured
