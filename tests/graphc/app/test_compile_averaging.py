"""``graphc.compile(sync="easgd"|...)``: a loop through the compiled model on two ranks ends with the
parameters (and EASGD's center) EQUAL to the same loop written with :mod:`runtime.averaging` directly,
whose own tests check the papers' equations; and every layout it cannot train is refused, saying what to do."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from averaging_cases import batch, model

import graphc
from graphc.app.compile_averaging import AveragingWorker
from graphc.ir.errors import ConfigurationError
from placement.presets import local
from placement.sync import ElasticAveragingSync, LocalSGDSync
from runtime import contiguous_plan
from runtime.averaging import (
    EAMSGD,
    EASGD,
    DiLoCo,
    LocalSGD,
    load_checkpoint,
    save_checkpoint,
)
from runtime.launch import spawn

BATCH = 16
STEPS = 5  # with a period of 2: two exchanges, then one local step after which the workers differ
SYNCS = {
    "easgd": ElasticAveragingSync(tau=2),
    "eamsgd": ElasticAveragingSync(tau=2, momentum=0.9),
    "local-sgd": LocalSGDSync(period=2),
    "diloco": LocalSGDSync(period=2, outer="nesterov"),
}
OUTER_LR = 0.5


def _loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(net(x), y)


def _compiled_loop(kind: str) -> dict:
    """The user's loop through graphc.compile, the global batch on every rank: a compiled loss function,
    or for local SGD the compiled module, whose outputs are this rank's rows (``compiled.share(y)``)."""
    world = 2
    net = model(0)
    module_form = kind == "local-sgd"
    compiled = graphc.compile(net if module_form else _loss, objective="throughput", parallel="data", sync=SYNCS[kind],
                              cluster=local(workers=world), progress=False, time_limit_s=5)  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    if module_form:
        strategy = compiled.optimizer(opt)  # the compiled module is the model
    else:
        strategy = compiled.optimizer(opt, net, outer_lr=OUTER_LR if kind == "diloco" else None)
    for step in range(STEPS):
        opt.zero_grad()
        x, y = batch(0, step, size=BATCH)
        loss = F.mse_loss(compiled(x), compiled.share(y)) if module_form else compiled(net, x, y)
        loss.backward()
        strategy.step()
    strategy.finish()
    out = {"worker": strategy.flat(), "settings": compiled.plan.settings["parallel"]["averaging"]["kind"]}
    if kind in ("easgd", "eamsgd"):
        out["center"] = strategy.center
    try:
        AveragingWorker(SYNCS[kind], 0, 3).check_plan(compiled.plan)
    except ConfigurationError as exc:
        out["three_ranks"] = str(exc)
    try:
        compiled.optimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), net)
    except ConfigurationError as exc:
        out["other_parameters"] = str(exc)
    return out


def _direct_loop(kind: str) -> dict:
    """The same loop written with runtime.averaging: each rank slices its rows by hand."""
    rank = dist.get_rank()
    net = model(0)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    if kind == "easgd":
        strategy = EASGD(net, sgd, tau=2)
    elif kind == "eamsgd":
        strategy = EAMSGD(net, lr=0.1, momentum=0.9, tau=2)
    elif kind == "local-sgd":
        strategy = LocalSGD(net, sgd, period=2)
    else:
        strategy = DiLoCo(net, sgd, period=2, outer_lr=OUTER_LR)
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    for step in range(STEPS):
        net.zero_grad()
        x, y = batch(0, step, size=BATCH)
        F.mse_loss(net(x[rows]), y[rows]).backward()
        strategy.step()
    strategy.finish()
    out = {"worker": strategy.flat()}
    if kind in ("easgd", "eamsgd"):
        out["center"] = strategy.center
    return out


def compiled_and_direct() -> dict:
    """On each rank: every kind through compile (which joins the process group itself), then directly."""
    compiled = {kind: _compiled_loop(kind) for kind in SYNCS}
    return {kind: {"compiled": compiled[kind], "direct": _direct_loop(kind)} for kind in SYNCS}


@pytest.mark.distributed
@pytest.mark.slow
def test_a_compiled_loop_equals_the_strategy_written_by_hand_on_two_ranks():
    outcomes = spawn(compiled_and_direct, 2, timeout_s=240)
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    for kind, sync in SYNCS.items():
        got = [o.result[kind] for o in outcomes]
        for rank in (0, 1):
            compiled, direct = got[rank]["compiled"], got[rank]["direct"]
            assert torch.equal(compiled["worker"], direct["worker"]), (kind, rank)
            if "center" in direct:
                assert torch.equal(compiled["center"], direct["center"]), (kind, rank)
            assert "torchrun --nproc-per-node 2" in compiled["three_ranks"]
            assert "make it over model.parameters()" in compiled["other_parameters"]
        assert got[0]["compiled"]["settings"] == sync.KIND
        # the ranks trained on different rows since the last exchange: the test sees each replica's share
        assert not torch.equal(got[0]["compiled"]["worker"], got[1]["compiled"]["worker"]), kind


def _easgd_run(steps: int, seed: int = 0, resume: str | None = None, save: str | None = None) -> dict:
    """``steps`` steps of EASGD (tau 2) through a compiled loss function, optionally loaded from and saved
    to a checkpoint; the batches follow the strategy's step count, so a resumed run sees the whole run's."""
    net = model(seed)
    compiled = graphc.compile(_loss, objective="throughput", parallel="data", sync=SYNCS["easgd"],
                              cluster=local(workers=2), progress=False, time_limit_s=5)  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    strategy = compiled.optimizer(opt, net)
    if resume:
        load_checkpoint(strategy, resume, dist.get_rank())
    for _ in range(steps):
        opt.zero_grad()
        compiled(net, *batch(0, strategy.steps, size=BATCH)).backward()
        strategy.step()
    strategy.finish()
    if save:
        save_checkpoint(strategy, save, dist.get_rank())
    return {"worker": strategy.flat(), "center": strategy.center, "steps": strategy.steps}


def whole_and_resumed(directory: str) -> dict:
    """6 steps in one run; 3 steps, saved, then loaded into a fresh compile (other initial weights) and 3 more."""
    whole = _easgd_run(6)
    _easgd_run(3, save=directory)
    return {"whole": whole, "resumed": _easgd_run(3, seed=1, resume=directory)}


@pytest.mark.distributed
@pytest.mark.slow
def test_a_compiled_averaging_run_resumed_from_a_checkpoint_continues_the_same_run(tmp_path):
    outcomes = spawn(whole_and_resumed, 2, (str(tmp_path),), timeout_s=240)
    for o in outcomes:
        assert o.ok, (o.rank, o.error, o.traceback)
    for o in outcomes:
        whole, resumed = o.result["whole"], o.result["resumed"]
        assert resumed["steps"] == whole["steps"] == 6
        assert torch.equal(resumed["worker"], whole["worker"]) and torch.equal(resumed["center"], whole["center"])


@pytest.mark.parametrize("parallel", ["pipeline", "hybrid"])
def test_an_averaging_sync_with_another_layout_than_data_is_refused(parallel):
    with pytest.raises(ConfigurationError, match="pass parallel='data', not parallel="):
        graphc.compile(model(0), objective="throughput", parallel=parallel, sync="easgd")


def test_an_averaging_sync_with_the_latency_objective_is_refused():
    with pytest.raises(ConfigurationError, match="pass objective='throughput'"):
        graphc.compile(model(0), objective="latency", parallel="data", sync=LocalSGDSync(period=4))


def test_an_averaging_sync_without_torch_distributed_says_to_start_the_script_with_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    with pytest.raises(ConfigurationError, match="torchrun --nproc-per-node N script.py"):
        graphc.compile(model(0), objective="throughput", parallel="data", sync="diloco")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sync": "async-easgd"}, "graphc run --sync async-easgd"),
        ({"sync": ElasticAveragingSync(asynchronous=True)}, "graphc run --sync async-easgd"),
        ({"sync": "easgd", "calibrate": True}, "leave calibrate out"),
        ({"sync": "easgd", "servers": ["cpu0"]}, "leave servers out"),
        ({"sync": "elastic"}, "ring, hierarchical, parameter-server, easgd, eamsgd"),
    ],
)
def test_what_compile_cannot_average_is_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        graphc.compile(model(0), objective="throughput", parallel="data", **options)


def test_optimizer_and_share_are_refused_without_an_averaging_sync():
    compiled = graphc.compile(model(0), objective="throughput", parallel="data", sync="ring")
    with pytest.raises(ConfigurationError, match="call optimizer.step"):
        compiled.optimizer(torch.optim.SGD(model(0).parameters(), lr=0.1))
    with pytest.raises(ConfigurationError, match="under an averaging sync"):
        compiled.share(torch.zeros(4))


def test_a_replica_count_other_than_the_ranks_says_how_to_match_them():
    net = model(0)
    x, _ = batch(0, 0, size=8)
    graph = graphc.trace(net, (x,), name="mlp").graph
    plan = contiguous_plan(graph, [["cpu0", "cpu1"]], microbatches=2)
    with pytest.raises(ConfigurationError, match=r"over 2 devices .* runs on 3 ranks.*--nproc-per-node 2.*batch divisible by 3"):
        AveragingWorker(SYNCS["easgd"], 0, 3).check_plan(plan)
    with pytest.raises(ConfigurationError, match=r"runs on 4 ranks") as refused:
        AveragingWorker(SYNCS["easgd"], 0, 4).check_plan(plan)
    assert "divisible" not in str(refused.value)  # 4 divides the batch of 8: only the count differs
