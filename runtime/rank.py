"""What a rank started by :func:`runtime.launch.spawn` runs: ``python -m runtime.rank SCRATCH``.

The rank first ties its life to the process that started it: on Linux the kernel kills it when that
process dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), elsewhere a thread watches the parent's id; either
way a rank never outlives a killed benchmark or test. Then it reads the call (``SCRATCH/call.pt``: the
function's name, plain arguments, intra-op threads), runs it with the environment ``spawn`` set (the
one torchrun gives), and writes ``SCRATCH/result-RANK.pt`` (a plain value) or ``SCRATCH/error-RANK.json``
(:func:`runtime.launch.error_doc`), exiting 0 or 1 (by :func:`runtime.launch.end_rank`); only a rank
that finished destroys its process group first.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from runtime.launch import (
    PARENT_ENV,
    end_rank,
    error_doc,
    load_plain,
    resolve_function,
    save_plain,
)

_PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_S = 0.5


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the process that started it) ends. The kernel watches the
    thread that started the rank, which is the one waiting in :func:`runtime.launch.spawn` until the
    rank ends; a parent that died while this process was starting up (before the signal was armed)
    is caught by its id."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="graphc-parent-watch").start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)


def main(scratch: Path) -> int:
    """Run the call in ``scratch`` on this rank; the exit status."""
    rank = int(os.environ["RANK"])
    try:
        call = load_plain(scratch / "call.pt")
        torch.set_num_threads(call["threads"])
        result = resolve_function(call["function"])(*call["args"])
        save_plain(result, scratch / f"result-{rank}.pt", "the result")
    except BaseException as exc:  # noqa: BLE001 -- reported to the caller, whatever it is
        # No orderly teardown after a failure: destroying a process group with work still posted to a
        # dead peer can wait out the group's timeout (NCCL's can hang), and the peers learn of this
        # rank's failure soonest when its process, and with it its sockets, ends at once.
        (scratch / f"error-{rank}.json").write_text(json.dumps(error_doc(exc)))
        return 1
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    die_with_parent(int(os.environ[PARENT_ENV]))
    end_rank(main(Path(sys.argv[1])))
