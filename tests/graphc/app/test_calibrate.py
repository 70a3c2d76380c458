"""graphc.calibrate: one call calibrates the local cluster, cached on disk by what makes it valid, and
graphc.compile(cluster="local", calibrate=True) plans with it.

The measurements (profiling, the eager step, the link) are replaced by fixed values, so that the tests
check what is done with them and do not depend on the machine's load; measuring them is the business of
tests/graphc/frontend/test_profile.py and tests/runtime/.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import graphc
import graphc.app.calibrate
from graphc.app.calibrate import CALIBRATION_SCHEMA, Machine
from graphc.ir.errors import ConfigurationError
from graphc.ir.profiled import ProfiledTimes
from placement import Cluster, simulate
from runtime.link import LinkSpeed

LINK = LinkSpeed(latency_s=2e-4, bandwidth=1.5e9, endpoint_cpu_s=3e-4, endpoint_cpu_per_byte_s=1e-10)
EAGER_MS = 10.0
MEMORY_BANDWIDTH = 8e9


@dataclass
class FakeMeasurements:
    """Counts the measurements :func:`graphc.calibrate` asks for, and answers them with fixed values:
    every node 1 ms forward and 2 ms backward, an eager step of :data:`EAGER_MS`, the link :data:`LINK`,
    a memory bandwidth of :data:`MEMORY_BANDWIDTH` for a model with parameters."""

    calls: dict[str, int] = field(default_factory=lambda: {"profile": 0, "eager": 0, "link": 0})
    batches: list[int] = field(default_factory=list)

    def profile_program(self, program, inputs, settings):
        """Every node ``1 + batch / 6`` ms forward and twice that backward: 1 ms fixed per microbatch."""
        self.calls["profile"] += 1
        batch = inputs[0].shape[0]
        self.batches.append(batch)
        table = ProfiledTimes()
        for node in program.graph.nodes():
            table.add(node, settings.device_kind, 1.0 + batch / 6, 2.0 + batch / 3)
        return table

    def eager_step_ms(self, model, inputs, **options):
        self.calls["eager"] += 1
        return EAGER_MS

    def copy_bandwidth(self, tensors):
        assert tensors and all(t.numel() for t in tensors)
        return MEMORY_BANDWIDTH

    def measure_link(self):
        self.calls["link"] += 1
        return LINK


@pytest.fixture
def measured(monkeypatch) -> FakeMeasurements:
    fake = FakeMeasurements()
    for name in ("profile_program", "eager_step_ms", "copy_bandwidth", "measure_link"):
        monkeypatch.setattr(graphc.app.calibrate, name, getattr(fake, name))
    return fake


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _printed(console: Console) -> str:
    return " ".join(console.export_text().split())


def test_calibrate_scales_the_profile_to_the_eager_step_and_plans_on_the_measured_link(measured, tmp_path):
    model = _model()
    console = Console(record=True, width=200, file=io.StringIO())
    found = graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path, console=console)
    assert not found.loaded and found.cached and measured.calls == {"profile": 2, "eager": 1, "link": 1}
    assert found.eager_ms == EAGER_MS and found.link == LINK and found.machine == Machine.this()
    program = graphc.trace(model, (torch.randn(6, 8),))
    assert found.key["graph"] == program.graph.fingerprint()
    alone = simulate(program.graph, found.cluster, {n: "cpu0" for n in program.graph.node_names()}, found.cost_model)
    assert alone.step_ms == pytest.approx(EAGER_MS)  # one worker predicts the eager step
    assert {link.bandwidth for link in found.cluster.links} == {LINK.bandwidth} and len(found.cluster.devices) == 2
    doc = json.loads(found.path.read_text())
    assert found.path.parent == tmp_path and doc["schema"] == CALIBRATION_SCHEMA and doc["factor"] == found.factor
    assert ProfiledTimes.from_dict(doc["profiled"]).times == found.profiled.times  # the profiler's own format
    assert doc["key"]["inputs"] == [[[6, 8], "torch.float32"]] and doc["key"]["torch"] == torch.__version__
    text = _printed(console)
    assert f"measured, cached in {found.path}" in text and "link between two ranks: 200 us per message, 1.50 GB/s" in text
    assert "each end's CPU 300 us + 100.00 us/MB per message" in text
    assert f"profiled times x {found.factor:.3f}" in text
    # The workers' memory bandwidth as a bucket's copies meet it: cached, and the cluster's CPU workers have it.
    assert found.memory_bandwidth == doc["memory_bandwidth"] == MEMORY_BANDWIDTH
    assert {d.memory_bandwidth for d in found.cluster.devices} == {MEMORY_BANDWIDTH}
    assert "memory bandwidth 8.0 GB/s (read + write), copying the gradients into a bucket and back" in text


def test_a_model_without_parameters_keeps_the_presets_memory_bandwidth(measured, tmp_path):
    found = graphc.calibrate(nn.ReLU(), (torch.randn(6, 8, requires_grad=True),), cache_dir=tmp_path)
    assert found.memory_bandwidth is None
    assert [d.memory_bandwidth for d in found.cluster.devices] == [d.memory_bandwidth for d in Cluster.preset("local").devices]
    again = graphc.calibrate(nn.ReLU(), (torch.randn(6, 8, requires_grad=True),), cache_dir=tmp_path)
    assert again.loaded and again.memory_bandwidth is None


def test_a_second_call_loads_the_cache_and_another_batch_shape_or_refresh_measures_again(measured, tmp_path):
    model = _model()
    first = graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path)
    console = Console(record=True, width=200, file=io.StringIO())
    again = graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path, console=console)
    assert again.loaded and measured.calls == {"profile": 2, "eager": 1, "link": 1}  # nothing measured again
    assert again.path == first.path and again.factor == first.factor and again.profiled.times == first.profiled.times
    assert again.link == LINK  # the link's cache keeps what a message costs each end's CPU
    assert again.memory_bandwidth == MEMORY_BANDWIDTH
    assert f"calibration loaded from {first.path}" in _printed(console)

    other = graphc.calibrate(model, (torch.randn(3, 8),), cache_dir=tmp_path)
    assert not other.loaded and other.path != first.path
    assert measured.calls == {"profile": 3, "eager": 2, "link": 1}  # the link is keyed by the machine alone; 3 does not split

    refreshed = graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path, refresh=True)
    assert not refreshed.loaded and measured.calls == {"profile": 5, "eager": 3, "link": 2}


def test_an_unreadable_or_foreign_cache_file_is_measured_again(measured, tmp_path):
    model = _model()
    first = graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path)
    first.path.write_text("{ cut short")
    assert not graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path).loaded
    doc = json.loads(first.path.read_text())
    doc["key"]["torch"] = "0.0.1"  # written by another torch
    first.path.write_text(json.dumps(doc))
    assert not graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path).loaded
    assert measured.calls["profile"] == 6
    assert graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path).loaded


def test_the_cache_folder_is_graphc_cache_unless_given(measured, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE", str(tmp_path / "env"))
    found = graphc.calibrate(_model(), (torch.randn(6, 8),))
    assert found.path.parent == tmp_path / "env" and any((tmp_path / "env").glob("link-*.json"))


def test_compile_with_calibrate_plans_with_the_calibration_and_reuses_the_cache(measured):
    model = _model()
    x, y = torch.randn(6, 8), torch.randn(6, 4)

    def loss_fn(net, x, y):
        return F.mse_loss(net(x), y)

    compiled = graphc.compile(loss_fn, cluster="local", solver="single", calibrate=True, progress=False)
    got = compiled(model, x, y)
    assert torch.allclose(got, F.mse_loss(model(x), y))
    plan = compiled.plan
    assert plan.predicted_step_ms == pytest.approx(EAGER_MS)  # one device, calibrated: the eager step
    assert {link.bandwidth for link in plan.cluster.links} == {LINK.bandwidth}
    assert measured.calls == {"profile": 2, "eager": 1, "link": 1}

    again = graphc.compile(loss_fn, cluster="local", solver="single", calibrate=True, progress=False)
    again(model, x, y)
    assert measured.calls == {"profile": 2, "eager": 1, "link": 1}  # a new compile loads the cache
    assert again.plan.predicted_step_ms == pytest.approx(EAGER_MS)


def test_compile_on_local_without_calibrate_warns_once_that_the_figures_are_uncalibrated(measured, capsys):
    model = _model()
    compiled = graphc.compile(model, cluster="local", time_limit_s=2, progress=True)
    compiled(torch.randn(6, 8))
    compiled(torch.randn(3, 8))
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("uncalibrated CPU figures") == 1 and "calibrate=True" in err
    assert measured.calls == {"profile": 0, "eager": 0, "link": 0}
    graphc.compile(model, cluster="pcie-4gpu", time_limit_s=2, progress=True)(torch.randn(6, 8))
    assert "uncalibrated" not in capsys.readouterr().err


def test_compile_refuses_calibrate_on_another_cluster():
    with pytest.raises(ConfigurationError, match="calibrate=True measures this machine's CPU workers"):
        graphc.compile(_model(), cluster="pcie-4gpu", calibrate=True)


def test_the_fixed_cost_per_microbatch_is_fitted_from_a_quarter_of_the_batch_or_a_half(measured, tmp_path):
    model = _model()
    found = graphc.calibrate(model, (torch.randn(8, 8),), cache_dir=tmp_path)
    assert measured.batches == [8, 4, 2, 1]  # the full batch, then a half, a quarter and an eighth of it
    program = graphc.trace(model, (torch.randn(8, 8),))
    node = next(n for n in program.graph.nodes() if n.op != "input")
    device = found.cluster.devices[0]
    assert found.profiled.lookup_fixed(node, device) == pytest.approx((1.0, 2.0))
    # each slice's times as profiled (1 + b / 6 forward, twice that backward), for the cost model to read
    split = found.profiled.lookup_split(node, device)
    assert sorted(split) == [2, 4, 8]
    for parts, times in split.items():
        assert times == pytest.approx((1 + 8 / parts / 6, 2 + 8 / parts / 3))
    loaded = graphc.calibrate(model, (torch.randn(8, 8),), cache_dir=tmp_path)
    assert loaded.loaded and loaded.profiled.fixed == found.profiled.fixed and loaded.profiled.split == found.profiled.split
    graphc.calibrate(model, (torch.randn(6, 8),), cache_dir=tmp_path)
    assert measured.batches[4:] == [6, 3]  # 6 does not split in 4 or 8
    unsplit = graphc.calibrate(model, (torch.randn(1, 8),), cache_dir=tmp_path)
    assert measured.batches[6:] == [1] and not unsplit.profiled.fixed and not unsplit.profiled.split


def test_a_model_that_cannot_run_on_a_quarter_of_the_batch_is_fitted_from_a_half(measured, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))  # batch norm needs 2 samples
    found = graphc.calibrate(model, (torch.randn(4, 8),), cache_dir=tmp_path)
    assert measured.batches == [4, 2] and found.profiled.fixed  # a quarter (1 sample) and an eighth fail


def test_a_calibration_measured_under_other_load_is_used_but_not_cached(measured, quiet_machine, tmp_path):
    quiet_machine.other_cores = 0.5
    console = Console(record=True, width=300, file=io.StringIO())
    busy = graphc.calibrate(_model(), (torch.randn(6, 8),), cache_dir=tmp_path, console=console)
    assert not busy.cached and not busy.path.exists() and busy.eager_ms == EAGER_MS
    assert not list(tmp_path.iterdir())  # neither the calibration nor the link
    text = _printed(console)
    assert "not caching the calibration: other processes used 0.5 cores" in text and "--recalibrate" in text
    assert "not caching the link: other processes used 0.5 cores" in text
    quiet_machine.other_cores = 0.2
    again = graphc.calibrate(_model(), (torch.randn(6, 8),), cache_dir=tmp_path)
    assert again.cached and not again.loaded and again.path.exists() and measured.calls["link"] == 2
    assert graphc.calibrate(_model(), (torch.randn(6, 8),), cache_dir=tmp_path).loaded
