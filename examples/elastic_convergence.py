"""Convergence of the averaging strategies on real data: held-out accuracy against steps and against bytes
sent, for N = 2, 4, 8 workers (graphc issue 16, item 4).

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1797 images of 8 x 8 pixels,
shipped inside the package, nothing downloaded), pixels scaled to [0, 1], split once by a seeded
permutation into 1397 training and 400 held-out images. Worker ``r`` of ``N`` trains on the training
images ``r, r + N, r + 2N, ...``, in minibatches of :data:`BATCH` drawn with its own seeded generator.
Model: an MLP 64 -> 32 -> 10 (ReLU; 2410 parameters, 9640 bytes), cross-entropy, the same initial
parameters for every strategy.

Strategies (:mod:`runtime.averaging`), all with SGD at :data:`LR` on the workers unless said:

* ``sync SGD``: synchronous data-parallel SGD, an all-reduce every step (``LocalSGD`` with ``H = 1``,
  which with plain SGD is the all-reduce of gradients, as its test asserts);
* ``EASGD tau=1, 4, 10``: synchronous EASGD, ``beta = N alpha = 0.9`` (the paper's);
* ``EAMSGD tau=10``: EASGD with Nesterov momentum 0.9 on the workers, at :data:`MOMENTUM_LR`;
* ``async EASGD tau=10 p=5``: the center sharded over :data:`SERVERS` parameter-server ranks, the talk's
  period and prefetch, ``alpha = 0.9 / N``;
* ``local SGD H=10`` and ``DiLoCo H=10`` (outer Nesterov SGD, lr 0.7, momentum 0.9: the paper's).

Every :data:`EVAL_EVERY` steps worker 0 evaluates the model the strategy stands for: EASGD's center (equal
on every worker), async EASGD's center as the servers hold it (read outside the counted traffic), or the
workers' parameters, which local SGD, DiLoCo and sync SGD have made equal at that step
(:data:`EVAL_EVERY` is a multiple of every period). Bytes are the payload worker 0 has sent (ring
all-reduce: ``2 (N - 1) / N`` parameter vectors per exchange; async: its parameters and headers).

Writes ``OUT/convergence.json`` (every curve), ``OUT/convergence.md`` (steps and bytes to reach each
target held-out accuracy, per strategy and N) and ``OUT/convergence.png`` (accuracy against steps and
against bytes, one column per N). One spawn of ``N + SERVERS`` CPU ranks per N runs every strategy in turn.

    .venv/bin/python examples/elastic_convergence.py --out results/convergence [--workers 2 4 8] [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from runtime import init_from_env
from runtime.averaging import EAMSGD, EASGD, AsyncEASGD, AsyncLayout, CenterServer, DiLoCo, LocalSGD, Strategy
from runtime.averaging.strategy import set_flat_parameters
from runtime.launch import spawn

HELD_OUT = 400
BATCH = 16
LR = 0.2
MOMENTUM_LR = 0.04
SERVERS = 2
EVAL_EVERY = 20
SEED = 0

STRATEGIES: list[dict[str, Any]] = [
    {"name": "sync SGD", "kind": "local", "period": 1},
    {"name": "EASGD tau=1", "kind": "easgd", "period": 1},
    {"name": "EASGD tau=4", "kind": "easgd", "period": 4},
    {"name": "EASGD tau=10", "kind": "easgd", "period": 10},
    {"name": "EAMSGD tau=10", "kind": "eamsgd", "period": 10},
    {"name": "async EASGD tau=10 p=5", "kind": "async", "period": 10, "prefetch": 5},
    {"name": "local SGD H=10", "kind": "local", "period": 10},
    {"name": "DiLoCo H=10", "kind": "diloco", "period": 10},
]


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split once: training images and labels, held-out images and labels."""
    from sklearn.datasets import load_digits  # imported on use: the ranks alone need it

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    test, train = order[:HELD_OUT], order[HELD_OUT:]
    return x[train], y[train], x[test], y[test]


def mlp() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _strategy(spec: dict[str, Any], model: torch.nn.Module, workers: Any, layout: AsyncLayout) -> Strategy:
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    kind, period = spec["kind"], spec["period"]
    if kind == "easgd":
        return EASGD(model, sgd, tau=period, group=workers)
    if kind == "eamsgd":
        return EAMSGD(model, lr=MOMENTUM_LR, tau=period, group=workers)
    if kind == "async":
        return AsyncEASGD(model, sgd, layout, tau=period, prefetch=spec["prefetch"])
    if kind == "diloco":
        return DiLoCo(model, sgd, period=period, group=workers)
    return LocalSGD(model, sgd, period=period, group=workers)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run_strategies(num_workers: int, steps: int) -> list[dict[str, Any]] | None:
    """On every rank: each strategy in turn; worker 0 returns the curves (the others None)."""
    init_from_env(timeout_s=600)
    rank = dist.get_rank()
    layout = AsyncLayout.servers_last(dist.get_world_size(), SERVERS)
    workers = dist.new_group(list(layout.workers))
    x_train, y_train, x_test, y_test = digits()
    mine = torch.arange(rank, len(y_train), num_workers) if rank < num_workers else None
    probe = mlp()
    curves = []
    for spec in STRATEGIES:
        model = mlp()
        if rank in layout.servers:
            if spec["kind"] == "async":
                CenterServer(layout, sum(p.numel() for p in model.parameters())).serve()
            continue
        strategy = _strategy(spec, model, workers, layout)
        draw = torch.Generator().manual_seed(1000 * (rank + 1))
        history = []
        start = time.perf_counter()
        for step in range(1, steps + 1):
            batch = mine[torch.randint(len(mine), (BATCH,), generator=draw)]
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            strategy.step()
            if rank == 0 and step % EVAL_EVERY == 0:
                center = strategy.peek_center() if isinstance(strategy, AsyncEASGD) else getattr(strategy, "center", None)
                set_flat_parameters(list(probe.parameters()), strategy.flat() if center is None else center)
                history.append({"step": step, "accuracy": _accuracy(probe, x_test, y_test), "bytes": strategy.traffic.sent})
        strategy.finish()
        if rank == 0:
            curves.append({**spec, "workers": num_workers, "seconds": time.perf_counter() - start, "history": history})
    return curves if rank == 0 else None


def first_reaching(history: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first evaluation at or above ``target`` accuracy, or None."""
    return next((h for h in history if h["accuracy"] >= target), None)


def table(curves: list[dict[str, Any]], targets: list[float]) -> str:
    """The markdown table: bytes sent per step and final accuracy, and the steps and bytes sent (per
    worker) to the first evaluation at or above each target accuracy."""
    head = ["strategy", "N", "KB sent per step", "final acc."] + [f"{k} to {t:.0%}" for t in targets for k in ("steps", "KB sent")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        last = c["history"][-1]
        cells = [c["name"], str(c["workers"]), f"{last['bytes'] / last['step'] / 1e3:.2f}", f"{last['accuracy']:.1%}"]
        for t in targets:
            hit = first_reaching(c["history"], t)
            cells += [str(hit["step"]), f"{hit['bytes'] / 1e3:.0f}"] if hit else ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curves: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against steps (top) and bytes sent per worker (bottom), one column per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({c["workers"] for c in curves})
    fig, axes = plt.subplots(2, len(ns), figsize=(4.2 * len(ns), 7), squeeze=False, sharey=True)
    colors = {s["name"]: plt.cm.tab10(i) for i, s in enumerate(STRATEGIES)}
    for j, n in enumerate(ns):
        for c in (c for c in curves if c["workers"] == n):
            steps = [h["step"] for h in c["history"]]
            acc = [h["accuracy"] for h in c["history"]]
            kb = [max(h["bytes"], 1.0) / 1e3 for h in c["history"]]
            axes[0][j].plot(steps, acc, color=colors[c["name"]], label=c["name"], lw=1.2)
            axes[1][j].plot(kb, acc, color=colors[c["name"]], label=c["name"], lw=1.2)
        axes[0][j].set_title(f"N = {n} workers")
        axes[0][j].set_xlabel("local steps")
        axes[1][j].set_xlabel("KB sent per worker (log)")
        axes[1][j].set_xscale("log")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_ylim(0.5, 1.0)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out accuracy")
    axes[1][0].set_ylabel("held-out accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/convergence"), help="folder for the JSON, table and plot")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8], help="numbers of workers N")
    parser.add_argument("--steps", type=int, default=600, help="local steps per worker (a multiple of 20)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95], help="held-out accuracies to reach")
    args = parser.parse_args()
    if args.steps % EVAL_EVERY:
        parser.error(f"--steps {args.steps}: expected a multiple of {EVAL_EVERY} (the evaluation period)")
    args.out.mkdir(parents=True, exist_ok=True)
    curves: list[dict[str, Any]] = []
    for n in args.workers:
        began = time.perf_counter()
        outcomes = spawn(run_strategies, n + SERVERS, (n, args.steps), timeout_s=900, grace_s=5)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise SystemExit(f"N = {n}: rank {failed[0].rank} failed: {failed[0].error}\n{failed[0].traceback}")
        curves += outcomes[0].result
        print(f"N = {n}: {len(STRATEGIES)} strategies in {time.perf_counter() - began:.0f} s")
    settings = {"held_out": HELD_OUT, "batch": BATCH, "lr": LR, "momentum_lr": MOMENTUM_LR, "servers": SERVERS,
                "eval_every": EVAL_EVERY, "steps": args.steps, "targets": args.targets, "parameters": sum(p.numel() for p in mlp().parameters())}
    (args.out / "convergence.json").write_text(json.dumps({"settings": settings, "curves": curves}, indent=1))
    markdown = table(curves, args.targets)
    (args.out / "convergence.md").write_text(markdown)
    plot(curves, args.out / "convergence.png")
    print(markdown)
    print(f"wrote {args.out}/convergence.json, convergence.md, convergence.png")


if __name__ == "__main__":
    main()
