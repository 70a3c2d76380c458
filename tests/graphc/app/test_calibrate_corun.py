"""graphc.calibrate(rebuild=...) measures the co-run slowdown of the local workers (runtime.corun) with the
calibration, caches it in the same file, and plans with it; without rebuild nothing changes.

runtime.corun.measure_corun, the profiler, the eager step and the link are replaced by fixed values (as
in test_calibrate.py), so that these tests check what is done with the measurements; the measurement
itself is tests/runtime/test_corun.py's business."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

import graphc
import graphc.app.calibrate
from graphc.app.calibrate import zoo_training_step
from graphc.frontend import zoo
from graphc.ir.profiled import ProfiledTimes
from placement import CostModel, simulate
from runtime.corun import CorunMeasurement
from runtime.link import LinkSpeed

REBUILD = ("gpt2", {"size": "small", "batch_size": 2, "dropout": 0.0})


class Fakes:
    """Fixed measurements, counted: every node 1 ms forward and 2 ms backward, a 10 ms eager step, a
    link, and a co-run of 15 ms against 10 ms alone (s(2) = 1.5)."""

    def __init__(self) -> None:
        self.calls = {"profile": 0, "eager": 0, "link": 0, "corun": 0}
        self.corun_args: list[tuple] = []

    def profile_program(self, program, inputs, settings):
        self.calls["profile"] += 1
        table = ProfiledTimes()
        for node in program.graph.nodes():
            table.add(node, settings.device_kind, 1.0, 2.0)
        return table

    def eager_step_ms(self, model, inputs, **options):
        self.calls["eager"] += 1
        return 10.0

    def measure_link(self):
        self.calls["link"] += 1
        return LinkSpeed(latency_s=2e-4, bandwidth=1.5e9)

    def measure_corun(self, factory, factory_args, counts):
        self.calls["corun"] += 1
        self.corun_args.append((factory, factory_args, list(counts)))
        return CorunMeasurement([10.0, 10.0], {k: [15.0, 15.0] for k in counts})


@pytest.fixture
def fakes(monkeypatch) -> Fakes:
    fake = Fakes()
    for name in ("profile_program", "eager_step_ms", "measure_link", "measure_corun"):
        monkeypatch.setattr(graphc.app.calibrate, name, getattr(fake, name))
    monkeypatch.setattr(graphc.app.calibrate, "usable_cores", lambda: 2)
    return fake


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_rebuild_measures_the_slowdown_caches_it_and_the_cost_model_uses_it(fakes, tmp_path):
    model, x = _model(), torch.randn(6, 8)
    console = Console(record=True, width=200, file=io.StringIO())
    found = graphc.calibrate(model, (x,), cache_dir=tmp_path, rebuild=REBUILD, console=console)
    assert fakes.corun_args == [("graphc.app.calibrate:zoo_training_step", ["gpt2", REBUILD[1]], [2])]
    assert found.corun_slowdown == {2: 1.5} and found.cost_model.corun_slowdown == {2: 1.5}
    assert json.loads(found.path.read_text())["corun_slowdown"] == {"2": 1.5}
    assert "2 at once x 1.500" in " ".join(console.export_text().split())
    # data parallel on both workers: they compute at once all along, every task 1.5 times as long
    program = graphc.trace(model, (x,))
    on_cpu0 = dict.fromkeys(program.graph.node_names(), "cpu0")
    alone = CostModel(found.cluster, profiled=found.scaled)
    options = {"microbatches": 2, "replicas": {"cpu0": ["cpu0", "cpu1"]}}
    both = simulate(program.graph, found.cluster, on_cpu0, found.cost_model, **options)
    assert both.busy_ms == pytest.approx({d: 1.5 * t for d, t in simulate(program.graph, found.cluster, on_cpu0, alone, **options).busy_ms.items()})

    again = graphc.calibrate(model, (x,), cache_dir=tmp_path, rebuild=REBUILD)
    assert again.loaded and again.corun_slowdown == {2: 1.5} and fakes.calls["corun"] == 1  # from the cache


def test_a_cached_calibration_without_the_slowdown_measures_only_it_and_rewrites_the_file(fakes, tmp_path):
    model, x = _model(), torch.randn(6, 8)
    plain = graphc.calibrate(model, (x,), cache_dir=tmp_path)
    assert plain.corun_slowdown == {} and plain.cost_model.corun_slowdown == {} and fakes.calls["corun"] == 0
    assert "co-run slowdown not measured" in " ".join(plain.describe())
    found = graphc.calibrate(model, (x,), cache_dir=tmp_path, rebuild=REBUILD)
    assert found.loaded and found.corun_slowdown == {2: 1.5}
    assert fakes.calls == {"profile": 2, "eager": 1, "link": 1, "corun": 1}  # the profile came from the cache
    assert json.loads(found.path.read_text())["corun_slowdown"] == {"2": 1.5}


def test_a_slowdown_measured_under_other_load_is_neither_used_nor_cached(fakes, tmp_path, quiet_machine):
    quiet_machine.other_cores = 0.2  # quiet enough for the profile, not for two ranks on two cores
    console = Console(record=True, width=200, file=io.StringIO())
    found = graphc.calibrate(_model(), (torch.randn(6, 8),), cache_dir=tmp_path, rebuild=REBUILD, console=console)
    assert fakes.calls["corun"] == 1 and found.cached and found.corun_slowdown == {} and found.cost_model.corun_slowdown == {}
    assert json.loads(found.path.read_text())["corun_slowdown"] == {}
    assert "not using the co-run slowdown: other processes used 0.20 cores" in " ".join(console.export_text().split())


def test_one_worker_or_one_core_measures_nothing(fakes, tmp_path, monkeypatch):
    found = graphc.calibrate(_model(), (torch.randn(6, 8),), cache_dir=tmp_path, rebuild=REBUILD, workers=1)
    assert found.corun_slowdown == {} and fakes.calls["corun"] == 0
    monkeypatch.setattr(graphc.app.calibrate, "usable_cores", lambda: 1)
    found = graphc.calibrate(_model(), (torch.randn(6, 8),), cache_dir=tmp_path, rebuild=REBUILD, refresh=True)
    assert found.corun_slowdown == {} and fakes.calls["corun"] == 0


def test_a_cache_file_with_a_bad_slowdown_is_measured_again(fakes, tmp_path):
    model, x = _model(), torch.randn(6, 8)
    first = graphc.calibrate(model, (x,), cache_dir=tmp_path, rebuild=REBUILD)
    doc = json.loads(first.path.read_text())
    doc["corun_slowdown"] = {"2": 0.5}  # not a slowdown
    first.path.write_text(json.dumps(doc))
    again = graphc.calibrate(model, (x,), cache_dir=tmp_path, rebuild=REBUILD)
    assert not again.loaded and again.corun_slowdown == {2: 1.5} and fakes.calls["profile"] == 4


def test_the_zoo_step_another_process_runs_is_the_networks_training_step():
    step = zoo_training_step(*REBUILD)
    zm = zoo.build(REBUILD[0], **REBUILD[1])  # the same network, weights and data
    expected = zm.loss(zm.model(*zm.example_inputs))
    torch.testing.assert_close(step(), expected.detach())
    torch.testing.assert_close(step(), expected.detach())  # a step changes no weight: the same again
