"""The profiler measures real op times on this machine's CPU and feeds the cost model."""

from __future__ import annotations

import torch
import torch.nn as nn

from graphc import trace
from graphc.frontend.profile import ProfileSettings, profile_program, time_nodes
from placement import Cluster, CostModel, ProfiledTimes


def _program():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))
    x = torch.randn(64, 256)
    return model, x, trace(model, x, granularity="module")


def test_profiled_times_are_positive_and_backward_only_where_gradients_are_needed():
    _, x, program = _program()
    timings = {t.node: t for t in time_nodes(program, (x,), ProfileSettings(repeats=3, warmup=1))}
    assert set(timings) == {n.name for n in program.graph.nodes() if n.op != "input"}
    assert all(t.fwd_ms > 0 for t in timings.values())
    # every layer is on the gradient path; a ReLU's backward can be within the noise of the subtracted
    # autograd call overhead, a Linear's cannot
    assert all(t.bwd_ms >= 0 for t in timings.values())
    assert all(timings[n].bwd_ms > 0 for n in ("0", "2", "4"))
    # a 512x512 layer does 2x the work of a 256x512 one: allow for noise, not for a wrong op
    assert timings["2"].fwd_ms > 0.8 * timings["0"].fwd_ms


def test_profile_leaves_the_model_untouched_and_feeds_the_cost_model(tmp_path):
    model, x, program = _program()
    before = [p.detach().clone() for p in model.parameters()]
    table = profile_program(program, (x,), ProfileSettings(repeats=2, warmup=1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    table.save(tmp_path / "profile.json")
    loaded = ProfiledTimes.load(tmp_path / "profile.json")
    assert loaded.times == table.times
    # the two ReLUs (same shapes) share one measurement; the three Linears are all distinct
    assert len(table) == 4
    cluster = Cluster.preset("local", workers=2)
    cost = CostModel(cluster, profiled=loaded)
    linear = program.graph.node("0")
    ms, source = cost.explain(linear, "cpu0")
    assert source == "profiled" and ms == table.lookup(linear, cluster.device("cpu0"))[0]
    # a second run measures nothing new: every node is in the table already
    again = profile_program(program, (x,), ProfileSettings(repeats=2, warmup=1), table=loaded)
    assert again.times == loaded.times
