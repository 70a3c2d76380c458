"""Turning a dead or hung rank into an error that names it, on every other rank, within a timeout.

A rank blocks only in a communication wait. The wait ends in one of two ways when a peer fails:

* the peer's process died: gloo sees the connection close at once ("Connection closed by peer");
* the peer hangs, or waits itself: the wait times out after the process group's timeout.

The direct peer is not always the culprit: in a chain 0 <- 1 <- 2 where rank 2 dies or hangs, rank 0
waits on rank 1, which is healthy but waits on rank 2. So ranks leave notes in the rendezvous store
(the torchrun agent's, which outlives the workers):

* ``wait/<rank>``: a background thread publishes what this rank has been waiting for once a wait
  lasts longer than a poll interval (nothing is written while communication flows);
* ``report/<rank>``: a rank that fails writes whom it blames, before it raises.

:meth:`FaultMonitor.failure` then names the culprit: the peer's own report if it failed first, else
the end of the chain of waits starting at the peer (the rank that is not waiting for anyone is the one
that hangs), else the peer. Without a store (a process group made by hand) the peer is named.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from collections.abc import Iterator

import torch.distributed as dist

from runtime.errors import RankFailure

# gloo closes a rank's connections when one of its waits times out, before that rank has written its
# report: a closed connection gets this long for the peer's report to appear before the peer is blamed.
REPORT_PATIENCE_S = 0.3
_DIED = ("Connection closed", "Connection reset", "Broken pipe", "connection refused", "ECONNRESET")


def store_from_env(timeout_s: float) -> dist.Store | None:
    """A client of the rendezvous store torchrun (or :func:`runtime.launch.spawn`) started, or None."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    try:
        return dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError):
        return None


class FaultMonitor:
    """Watches this rank's waits and explains failures (see the module docstring).

    Args:
        rank: this rank.
        devices: the plan device of every rank.
        store: the store to leave notes in (None: notes are off).
        timeout_s: the timeout the waits run under (for the messages).
        namespace: a prefix unique to this run, the same on every rank.
    """

    def __init__(self, rank: int, devices: list[str], store: dist.Store | None, timeout_s: float, namespace: str) -> None:
        self.rank, self.devices, self.timeout_s = rank, devices, timeout_s
        self.store = dist.PrefixStore(namespace, store) if store is not None else None
        self.poll_s = min(0.5, timeout_s / 8)
        self._lock = threading.Lock()
        self._waiting: tuple[int, str, float] | None = None
        self._published: tuple[int, str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.store is not None:
            self._thread = threading.Thread(target=self._watch, name=f"graphc-fault-monitor-{rank}", daemon=True)
            self._thread.start()

    def describe(self, rank: int) -> str:
        return f"rank {rank} ({self.devices[rank]})"

    @contextlib.contextmanager
    def waiting(self, peer: int, op: str) -> Iterator[None]:
        """Mark this rank as blocked on ``peer`` in ``op`` for the duration of the block."""
        self._waiting = (peer, op, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def failure(self, peer: int, op: str, error: BaseException) -> RankFailure:
        """The :class:`RankFailure` for a wait on ``peer`` in ``op`` that ended with ``error``; its report is
        left in the store for the ranks that notice later."""
        since = self._waiting[2] if self._waiting is not None else time.monotonic()
        waited = time.monotonic() - since
        died = any(marker.lower() in str(error).lower() for marker in _DIED)
        culprit, why = peer, "died (its connection closed)" if died else f"sent nothing for {waited:.1f} s"
        report = self._read(f"report/{peer}", patience_s=REPORT_PATIENCE_S if died else 0.0)
        if report:
            culprit = int(report["culprit"])
            why = f"failed first and blames {self.describe(culprit)}: {report['reason']}"
        elif not died:
            chain, end = self._wait_chain(peer)
            culprit = end
            if chain:
                why = f"waits for {' which waits for '.join(chain)}, which hangs (it waits for no one)"
            else:
                why = f"hangs: it sent nothing for {waited:.1f} s and is not waiting for anyone"
        message = (
            f"{self.describe(self.rank)}: {op} failed after {waited:.1f} s: {self.describe(peer)} {why}. "
            f"Check the log of {self.describe(culprit)}; if it is only slow, raise the timeout "
            f"(timeout_s={self.timeout_s:g}). Underlying error: {str(error).splitlines()[0][:200]}"
        )
        self._write(f"report/{self.rank}", {"culprit": culprit, "reason": f"{op}: {why}"})
        return RankFailure(message, culprit, self.devices[culprit], op)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.poll_s)

    # -- notes --------------------------------------------------------------------------------
    def _wait_chain(self, peer: int) -> tuple[list[str], int]:
        """Follow the published waits from ``peer``: (descriptions of the ranks on the way, last rank)."""
        chain: list[str] = []
        seen = {self.rank}
        current = peer
        while current not in seen:
            seen.add(current)
            note = self._read(f"wait/{current}")
            if not note:
                break
            nxt = int(note["peer"])
            chain.append(f"{self.describe(nxt)} in {note['op']}")
            if nxt in seen:
                break
            current = nxt
        return chain, current

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[2] > self.poll_s:
                if waiting != self._published:
                    self._write(f"wait/{self.rank}", {"peer": waiting[0], "op": waiting[1]})
                    self._published = waiting
            elif self._published is not None:
                self._write(f"wait/{self.rank}", {})
                self._published = None

    def _read(self, key: str, patience_s: float = 0.0) -> dict:
        """The note under ``key`` ({} if none), waiting up to ``patience_s`` for it to appear."""
        if self.store is None:
            return {}
        deadline = time.monotonic() + patience_s
        while True:
            with self._lock:
                try:
                    if self.store.check([key]):
                        return json.loads(self.store.get(key).decode() or "{}")
                except (RuntimeError, ValueError):
                    return {}
            if time.monotonic() >= deadline:
                return {}
            time.sleep(0.02)

    def _write(self, key: str, value: dict) -> None:
        if self.store is None:
            return
        with self._lock:
            try:
                self.store.set(key, json.dumps(value))
                self.store.check([key])  # a round trip: the note is in the store before this rank goes on
            except RuntimeError:
                pass
