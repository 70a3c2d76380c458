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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphc.ir.errors import RunFailed
from runtime.hosts.fixture import Hosts
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
    :func:`runtime.distributed.init_from_env` itself, ``args`` and results are plain values. torchrun ends
    a host's ranks when one of them fails, and a host whose ranks lost their peers ends too; after
    ``timeout_s`` every host's torchrun is killed and a :class:`~graphc.ir.errors.RuntimeFault` names
    the hosts still running.
    """
    name = function_name(fn)
    args = plain(tuple(args), "args")
    world = len(hosts) * nproc_per_host
    with tempfile.TemporaryDirectory(prefix="graphc-hosts-") as scratch:
        save_plain({"function": name, "args": list(args), "threads": threads}, Path(scratch) / "call.pt", "the call")
        commands = {h: torchrun_argv(hosts, h.index, nproc_per_host, ["runtime.rank", scratch]) for h in hosts}
        env = {"PYTHONPATH": os.pathsep.join(str(Path(p).resolve()) for p in sys.path), "OMP_NUM_THREADS": str(threads)}
        finished = hosts.run_all(commands, timeout_s, env)
        return [_outcome(Path(scratch), rank, finished[rank // nproc_per_host]) for rank in range(world)]


def _outcome(scratch: Path, rank: int, torchrun: subprocess.CompletedProcess[str]) -> RankOutcome:
    """What rank ``rank`` left in ``scratch``; ``torchrun`` is its host's. A rank's own exit status is
    torchrun's to know: 0 with a result, 1 with an error, else its host's torchrun's status."""
    error, result = scratch / f"error-{rank}.json", scratch / f"result-{rank}.pt"
    if error.exists():
        doc = json.loads(error.read_text())
        return RankOutcome(rank, error=error_from_doc(doc), traceback=doc["traceback"], exitcode=1)
    if result.exists():
        return RankOutcome(rank, result=load_plain(result), exitcode=0)
    return RankOutcome(
        rank,
        error=RunFailed(f"rank {rank} left no result; its host's torchrun ended with status {torchrun.returncode}: {torchrun.stderr.strip()[-2000:]}"),
        exitcode=torchrun.returncode,
    )
