"""Running a function on ranks spread over namespace hosts: :func:`spawn_on_hosts`, torchrun on each host.

What :func:`runtime.launch.spawn` is to one machine, across :class:`~runtime.hosts.Hosts`: the function
goes by name and plain arguments (``call.pt`` in a scratch folder, which the namespaces share, as hosts
would share a network file system), and every rank runs ``python -m runtime.rank`` and leaves its result
or error there. The ranks are started as on real hosts, by ``torchrun`` on each host with multi-node
static rendezvous at host 0's address (the command line ``graphc run`` builds):

    host i:  torchrun --nnodes N --node-rank i --nproc-per-node k --master-addr <host 0> --master-port P

so rank ``i * k + j`` is worker ``j`` of host ``i``. A rank dies with its torchrun
(``runtime.rank`` ties itself to the process that started it, named in
:data:`runtime.launch.PARENT_ENV`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphc.ir.errors import RunFailed
from runtime.hosts.fixture import Host, Hosts, kill_group
from runtime.launch import (
    PARENT_ENV,
    RankOutcome,
    error_from_doc,
    function_name,
    load_plain,
    plain,
    save_plain,
)

MASTER_PORT = 29500
# How often spawn_on_hosts looks for the ranks' results; how long torchruns get to end once all are in.
POLL_S = 0.05
EXIT_GRACE_S = 2.0


def torchrun_argv(hosts: Hosts, node_rank: int, nproc_per_host: int, module_argv: list[str], port: int = MASTER_PORT) -> list[str]:
    """``python -m torch.distributed.run`` for host ``node_rank`` running ``python -m module_argv...``,
    its agent's id handed to its ranks in :data:`~runtime.launch.PARENT_ENV` (``sh`` execs torchrun)."""
    torchrun = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={len(hosts)}", f"--node-rank={node_rank}", f"--nproc-per-node={nproc_per_host}",
        f"--master-addr={hosts[0].address}", f"--master-port={port}",
        "-m", *module_argv,
    ]  # fmt: skip
    return ["sh", "-c", f'{PARENT_ENV}=$$ exec "$@"', "sh", *torchrun]


def spawn_on_hosts(
    hosts: Hosts,
    fn: Callable[..., Any] | str,
    args: tuple = (),
    *,
    nproc_per_host: int = 1,
    timeout_s: float = 300.0,
    threads: int = 1,
) -> list[RankOutcome]:
    """Run ``fn(*args)`` on ``nproc_per_host`` ranks of every host (module docstring); every rank's outcome.

    As :func:`runtime.launch.spawn`: ``fn`` is importable by name and calls
    :func:`runtime.distributed.init_from_env` itself, ``args`` and results are plain values. It returns
    once every rank has left its result or error, or its host's torchrun has ended (torchrun ends a
    host's ranks when one of them fails); a rank still running after ``timeout_s`` is killed with its
    host's torchrun and reported so. torchrun's agents wait for each other when their ranks are done (an
    exit barrier of 300 s), which a lost host would hold up: they are ended here once every rank is
    accounted for.
    """
    name = function_name(fn)
    args = plain(tuple(args), "args")
    with tempfile.TemporaryDirectory(prefix="graphc-hosts-") as folder:
        scratch = Path(folder)
        save_plain({"function": name, "args": list(args), "threads": threads}, scratch / "call.pt", "the call")
        env = {"PYTHONPATH": os.pathsep.join(str(Path(p).resolve()) for p in sys.path), "OMP_NUM_THREADS": str(threads)}
        logs = {h: (scratch / f"torchrun-{h.name}.log").open("w+") for h in hosts}
        torchruns = {
            h: hosts.popen(h, torchrun_argv(hosts, h.index, nproc_per_host, ["runtime.rank", folder]), env, stdout=logs[h], stderr=subprocess.STDOUT)
            for h in hosts
        }
        ranks = {rank: hosts[rank // nproc_per_host] for rank in range(len(hosts) * nproc_per_host)}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(_left(scratch, r) or torchruns[h].poll() is not None for r, h in ranks.items()):
            time.sleep(POLL_S)
        ended = {h: p.poll() is not None for h, p in torchruns.items()}
        _finish(torchruns)
        outcomes = []
        for rank, host in ranks.items():
            logs[host].seek(0)
            outcomes.append(_outcome(scratch, rank, host.name, torchruns[host].returncode if ended[host] else None, logs[host].read()))
        for log in logs.values():
            log.close()
        return outcomes


def _left(scratch: Path, rank: int) -> bool:
    """Whether ``rank`` has written its result or error (each written whole before the rank exits)."""
    return (scratch / f"result-{rank}.pt").exists() or (scratch / f"error-{rank}.json").exists()


def _finish(torchruns: dict[Host, subprocess.Popen]) -> None:
    """Give the torchruns still running :data:`EXIT_GRACE_S` to end by themselves, then end them."""
    deadline = time.monotonic() + EXIT_GRACE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in torchruns.values()):
        time.sleep(POLL_S)
    for process in torchruns.values():
        kill_group(process)


def _outcome(scratch: Path, rank: int, host: str, status: int | None, log: str) -> RankOutcome:
    """What rank ``rank`` of ``host`` left in ``scratch``; ``status`` is its host's torchrun's exit status
    (None: it was still running and was killed), ``log`` its output. A rank's own exit status is
    torchrun's to know: 0 with a result, 1 with an error, else its host's torchrun's."""
    error, result = scratch / f"error-{rank}.json", scratch / f"result-{rank}.pt"
    if error.exists():
        doc = json.loads(error.read_text())
        return RankOutcome(rank, error=error_from_doc(doc), traceback=doc["traceback"], exitcode=1)
    if result.exists():
        return RankOutcome(rank, result=load_plain(result), exitcode=0)
    why = "was still running at the timeout and was killed" if status is None else f"left no result; {host}'s torchrun ended with status {status}"
    return RankOutcome(rank, error=RunFailed(f"rank {rank} on {host} {why}. torchrun said: {log.strip()[-8000:]}"), exitcode=status)
