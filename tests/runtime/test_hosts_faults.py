"""Faults across namespace hosts: ``graphc run`` on two hosts, then every process of host 1 is killed, or
host 1's link is cut. The synchronous run on host 0 ends within its ``--timeout`` (plus the shutdown's
few seconds), never hangs, and names the lost rank and its device, whose name says its host. The
cut-off host's own run ends likewise (:func:`test_the_cut_off_host_ends_too`): its fault monitor skips
the notes of the unreachable rendezvous store rather than wait on it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from hosts_cases import crossing_bytes, gpt2_plan, graphc_run_argv

from runtime.hosts import Hosts

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TIMEOUT_S = 8.0
# After the fault, graphc run on host 0 has this long beyond --timeout to report it and end.
SHUTDOWN_MARGIN_S = 12.0


def start_training(hosts: Hosts, tmp_path: Path) -> list:
    """``graphc run`` of a long pipeline on every host, returned once some steps have crossed the link."""
    plan = gpt2_plan(2)
    plan.save(tmp_path / "plan.json")
    options = ("--steps", "100000", "--warmup", "0", "--timeout", str(TIMEOUT_S))
    logs = [(tmp_path / f"{h.name}.err").open("w+") for h in hosts]
    runs = [hosts.popen(h, graphc_run_argv(hosts, h, tmp_path / "plan.json", *options), stderr=log) for h, log in zip(hosts, logs)]
    start, deadline = hosts.traffic(hosts[1]), time.monotonic() + 180
    while hosts.traffic(hosts[1]) - start < 10 * crossing_bytes(plan):  # a few steps' activations and gradients
        assert all(r.poll() is None for r in runs), f"graphc run ended before training: {[log.name for log in logs]}"
        assert time.monotonic() < deadline, "no training traffic between the hosts after 180 s"
        time.sleep(0.2)
    return list(zip(runs, logs))


def ended_within(run, log, seconds: float) -> str:
    """A host's graphc run's stderr once it ended, which it must within ``seconds``, failing."""
    try:
        status = run.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"graphc run ({' '.join(run.args[:4])}) still ran {seconds:g} s after the fault: it hangs")
    log.seek(0)
    err = log.read()
    assert status != 0, err
    return err


def test_a_host_whose_processes_all_die_is_named_by_the_other(make_hosts, tmp_path):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    (run0, log0), _ = start_training(hosts, tmp_path)
    assert hosts.kill(hosts[1])
    err = ended_within(run0, log0, TIMEOUT_S + SHUTDOWN_MARGIN_S)
    assert "rank 1 (h1/cpu0)" in err and "died" in err, err


def test_a_host_whose_link_is_cut_is_named_within_the_timeout(make_hosts, tmp_path):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    (run0, log0), _ = start_training(hosts, tmp_path)
    hosts.set_link(hosts[1], up=False)
    cut = time.monotonic()
    err = ended_within(run0, log0, TIMEOUT_S + SHUTDOWN_MARGIN_S)
    assert time.monotonic() - cut >= TIMEOUT_S * 0.9  # it waited its timeout for the silent host, not less
    assert "rank 1 (h1/cpu0)" in err and "sent nothing" in err, err


def test_the_cut_off_host_ends_too(make_hosts, tmp_path):
    hosts = make_hosts(2, bandwidth=100e6 / 8)
    _, (run1, log1) = start_training(hosts, tmp_path)
    hosts.set_link(hosts[1], up=False)
    err = ended_within(run1, log1, TIMEOUT_S + SHUTDOWN_MARGIN_S)
    assert "rank 0 (h0/cpu0)" in err, err
