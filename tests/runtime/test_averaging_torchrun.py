"""The averaging strategies in an ordinary training script under ``torchrun``: this file is also the
script (its ``__main__`` block), started by the test on three ranks: two workers train with synchronous
EASGD, then with asynchronous EASGD against the third rank, a center server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()


@pytest.mark.distributed
@pytest.mark.slow
def test_easgd_and_async_easgd_train_under_torchrun(tmp_path):
    out = tmp_path / "result.json"
    helpers = str(HERE.parents[1] / "helpers")
    env_path = {"PYTHONPATH": ":".join([helpers, str(HERE.parents[2])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", str(HERE), str(out)]
    done = subprocess.run(command, env={**os.environ, **env_path}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["easgd"]["after"] < 0.1 * result["easgd"]["before"]
    assert result["async"]["after"] < 0.1 * result["async"]["before"]
    assert result["async"]["server_arrivals"] == {"0": 10, "1": 10}  # 40 steps / tau 4, from each worker


def main(out: str) -> None:
    """What each rank runs: a user's loop around a strategy (the test reads rank 0's ``out``)."""
    import torch
    import torch.distributed as dist

    from averaging_cases import held_out_loss, model, train
    from runtime import init_from_env
    from runtime.averaging import EASGD, AsyncEASGD, AsyncLayout, CenterServer

    init_from_env(timeout_s=60)
    rank = dist.get_rank()
    layout = AsyncLayout.servers_last(dist.get_world_size(), 1)
    workers = dist.new_group(list(layout.workers))
    result = {}
    if rank in layout.workers:
        net = model(0)
        before = held_out_loss(net)
        strategy = EASGD(net, torch.optim.SGD(net.parameters(), lr=0.1), tau=4, group=workers)
        train(strategy, rank, 40)
        result["easgd"] = {"before": before, "after": held_out_loss(model(0), strategy.center)}
    net = model(0)
    if rank in layout.servers:
        server = CenterServer(layout, sum(p.numel() for p in net.parameters()))
        server.serve()
        dist.send(torch.tensor([server.arrivals[w] for w in layout.workers]), 0)
    else:
        strategy = AsyncEASGD(net, torch.optim.SGD(net.parameters(), lr=0.1), layout, tau=4, prefetch=2)
        train(strategy, rank, 40)
        center = strategy.peek_center()
        strategy.finish()
        result["async"] = {"before": result["easgd"]["before"], "after": held_out_loss(model(0), center)}
    if rank == 0:
        arrivals = torch.zeros(len(layout.workers), dtype=torch.int64)
        dist.recv(arrivals, layout.servers[0])
        result["async"]["server_arrivals"] = {str(w): int(n) for w, n in zip(layout.workers, arrivals)}
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
