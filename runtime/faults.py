"""Turning a dead or hung rank into an error that names it, on every other rank, within a timeout.

A rank blocks only in a communication wait. The wait ends in one of two ways when a peer fails:

* the peer's process died: gloo sees the connection close at once ("Connection closed by peer");
* the peer hangs, or waits itself: the wait times out after the process group's timeout.

The direct peer is not always the culprit: in a chain 0 <- 1 <- 2 where rank 2 dies or hangs, rank 0
waits on rank 1, which is healthy but waits on rank 2. So ranks leave notes in the rendezvous store
(the torchrun agent's, which outlives the workers):

* ``wait/<rank>``: a background thread publishes what this rank has been waiting for once a wait
  lasts longer than a poll interval (nothing is written while communication flows);
* ``doing/<rank>``: likewise, the step's action (forward, loss, backward of a microbatch, the
  optimizer) that has lasted longer than a poll interval, so a rank that hangs in computation, or dies
  in a long one, is named with what it was doing;
* ``report/<rank>``: a rank that fails writes whom it blames, before it raises.

A store that stops answering (its host cut off) would block a note forever, so a rank that cannot get
to the store within a poll interval goes without notes and blames its direct peer.

:meth:`FaultMonitor.failure` then names the culprit: the peer's own report if it failed first, else
the end of the chain of waits starting at the peer (the rank that is not waiting for anyone is the one
that hangs), else the peer. Without a store (a process group made by hand) the peer is named.

Launchers end every rank once one fails (torchrun sends SIGTERM to the others at once): a rank that
is explaining a failure at that moment would die silently. :func:`finish_reports_on_sigterm` gives a
rank :data:`REPORT_GRACE_S` after SIGTERM to raise its :class:`RankFailure`. ``graphc run`` also
collects every rank's failure as a :class:`FaultReport` (JSON files in the directory named by
:data:`REPORTS_ENV`) and prints the first one itself.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from runtime.errors import RankFailure

# gloo closes a rank's connections when one of its waits times out, before that rank has written its
# report: a closed connection gets this long for the peer's report to appear before the peer is blamed.
REPORT_PATIENCE_S = 0.3
_DIED = ("Connection closed", "Connection reset", "Broken pipe", "connection refused", "ECONNRESET")
# After SIGTERM a rank has this long to finish explaining a failure (see finish_reports_on_sigterm).
REPORT_GRACE_S = 1.0
# The directory where ``graphc run``'s ranks write their FaultReport files.
REPORTS_ENV = "GRAPHC_FAULT_REPORTS"


@dataclass(frozen=True)
class _Note:
    """What a rank is waiting for or doing (``value``, as published) and since when (monotonic s)."""

    value: dict[str, Any]
    since: float


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
        self._waiting: _Note | None = None
        self._doing: _Note | None = None
        self._published: dict[str, _Note | None] = {"wait": None, "doing": None}
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
        self._waiting = _Note({"peer": peer, "op": op}, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def doing(self, activity: str) -> None:
        """Record the step's action this rank starts now (``"forward of microbatch 0"``); a plain
        assignment, published by the background thread only if it lasts longer than a poll interval."""
        self._doing = _Note({"activity": activity}, time.monotonic())

    def done(self) -> None:
        """This rank finished its step's actions."""
        self._doing = None

    def failure(self, peer: int, op: str, error: BaseException) -> RankFailure:
        """The :class:`RankFailure` for a wait on ``peer`` in ``op`` that ended with ``error``; its report is
        left in the store for the ranks that notice later."""
        since = self._waiting.since if self._waiting is not None else time.monotonic()
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
        activity = self._read(f"doing/{culprit}").get("activity", "") if culprit != self.rank else ""
        if activity and activity not in why:
            why += f"; {self.describe(culprit)} was last seen in the {activity}"
        message = (
            f"{self.describe(self.rank)}: {op} failed after {waited:.1f} s: {self.describe(peer)} {why}. "
            f"Check the log of {self.describe(culprit)}; if it is only slow, raise the timeout "
            f"(timeout_s={self.timeout_s:g}). Underlying error: {str(error).splitlines()[0][:200]}"
        )
        self._write(f"report/{self.rank}", {"culprit": culprit, "reason": f"{op}: {why}"})
        return RankFailure(message, culprit, self.devices[culprit], op, activity)

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
            self._publish("wait", self._waiting)
            self._publish("doing", self._doing)

    def _publish(self, kind: str, current: _Note | None) -> None:
        """Leave ``current`` under ``<kind>/<rank>`` once it has lasted a poll interval; clear the note
        when it ends. At most one write per poll interval and kind, none while nothing lasts."""
        published = self._published[kind]
        if current is not None and time.monotonic() - current.since > self.poll_s:
            if current != published:
                self._write(f"{kind}/{self.rank}", current.value)
                self._published[kind] = current
        elif published is not None:
            self._write(f"{kind}/{self.rank}", {})
            self._published[kind] = None

    def _read(self, key: str, patience_s: float = 0.0) -> dict:
        """The note under ``key`` ({} if none), waiting up to ``patience_s`` for it to appear."""
        if self.store is None:
            return {}
        deadline = time.monotonic() + patience_s
        while True:
            with self._store_turn() as mine:
                if not mine:
                    return {}
                try:
                    if self.store.check([key]):
                        return json.loads(self.store.get(key).decode() or "{}")
                except (RuntimeError, ValueError):
                    return {}
            if time.monotonic() >= deadline:
                return {}
            time.sleep(0.02)

    @contextlib.contextmanager
    def _store_turn(self) -> Iterator[bool]:
        """This thread's turn at the store: True once it holds the lock, False when another thread has held
        it for a poll interval (that thread is stuck in a store call: the store's host is cut off, and a
        TCP connection without a reset blocks for many minutes), so notes are skipped, not waited for."""
        mine = self._lock.acquire(timeout=self.poll_s)
        try:
            yield mine
        finally:
            if mine:
                self._lock.release()

    def _write(self, key: str, value: dict) -> None:
        if self.store is None:
            return
        with self._store_turn() as mine:
            if not mine:
                return
            try:
                self.store.set(key, json.dumps(value))
                self.store.check([key])  # a round trip: the note is in the store before this rank goes on
            except RuntimeError:
                pass


def finish_reports_on_sigterm() -> None:
    """Make SIGTERM end this process :data:`REPORT_GRACE_S` after it arrives rather than at once.

    torchrun sends SIGTERM to every other rank as soon as one dies, often before they have turned the
    closed connection into a :class:`RankFailure`; the grace lets them say which rank died, and in what.
    The handler runs once the main thread is back in Python (a blocked wait ends first, as any wait on a
    dead peer does at once). Installed only from the main thread and only over SIGTERM's default
    action: a program's own handler is kept.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_after_grace)


def _exit_after_grace(signum: int, frame: Any) -> None:
    timer = threading.Timer(REPORT_GRACE_S, os._exit, (128 + signum,))
    timer.daemon = True
    timer.start()


@dataclass(frozen=True)
class FaultReport:
    """One rank's failure, as ``graphc run`` prints it: which rank failed, on which device, in what.

    Attributes:
        reporter: the rank that wrote the report.
        rank: the rank that failed: the culprit of a :class:`RankFailure`, else the reporter.
        device: that rank's plan device ("" when the rank failed before it knew its device).
        op: the operation in which the reporter lost the failed rank ("" for the reporter's own error).
        activity: what the failed rank was last seen doing, when known.
        message: the whole explanation.
        at: when the reporter noticed (seconds since the epoch): the earliest report is the root cause.
    """

    reporter: int
    rank: int
    device: str
    op: str
    activity: str
    message: str
    at: float

    @classmethod
    def of(cls, error: BaseException, reporter: int, device: str, message: str | None = None) -> FaultReport:
        """The report of ``error`` raised on rank ``reporter`` (running ``device``); ``message`` replaces
        the error's text (a traceback, for an error that is not graphc's)."""
        message = message or str(error)
        if isinstance(error, RankFailure):
            return cls(reporter, error.rank, error.device, error.op, error.activity, message, time.time())
        return cls(reporter, reporter, device, "", "", message, time.time())

    def headline(self) -> str:
        """One line: the failed rank, its device, what it was doing and where the failure showed."""
        who = f"rank {self.rank}" + (f" ({self.device})" if self.device else "")
        line = f"{who} failed" + (f" in the {self.activity}" if self.activity else "")
        if self.op:
            line += f"; rank {self.reporter} lost it in the {self.op}"
        return line

    def save(self, directory: str | Path) -> None:
        """Write the report as ``rank<reporter>.json`` in ``directory``, whole or not at all."""
        path = Path(directory) / f"rank{self.reporter}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, path)

    @staticmethod
    def files(directory: str | Path) -> list[Path]:
        """The reports saved in ``directory`` so far (complete files only: :meth:`save` writes whole)."""
        return list(Path(directory).glob("rank*.json"))

    @classmethod
    def first(cls, directory: str | Path) -> FaultReport | None:
        """The earliest report in ``directory``, or None while there is none."""
        reports = [cls(**json.loads(p.read_text())) for p in cls.files(directory)]
        return min(reports, key=lambda r: r.at, default=None)
