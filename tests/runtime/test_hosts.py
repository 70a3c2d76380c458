"""runtime.hosts: namespace hosts reach each other and nothing else, their links carry the shaped rate, they
are removed however the fixture ends, and their cluster prices the links as made."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from graphc.ir.errors import ConfigurationError
from placement.cluster import Cluster
from runtime.hosts import Hosts, hosts_cluster, net, reaches, transfer_s
from runtime.hosts.topology import VETH_LATENCY_S

MBIT = 1e6 / 8  # bytes/s


def leftovers(stem: str) -> tuple[list[str], list[str]]:
    """The namespaces and the links of this namespace whose names contain ``stem``."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [s for s in spaces.splitlines() if stem in s], [line for line in links.splitlines() if stem in line]


def outside_address() -> str:
    """An address of this machine's own namespace (its default route's source), which hosts must not reach."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=False).stdout.split()
    return route[route.index("src") + 1] if "src" in route else "127.0.0.1"


@pytest.mark.distributed
def test_two_hosts_reach_each_other_and_nothing_outside(make_hosts):
    hosts = make_hosts(2)
    h0, h1 = hosts
    assert h0.address != h1.address
    assert reaches(hosts, h0, h1.address) and reaches(hosts, h1, h0.address)
    assert not reaches(hosts, h0, outside_address())
    assert not reaches(hosts, h0, "192.0.2.1")  # no route leaves the hosts' subnet
    hosts.set_link(h1, up=False)
    assert not reaches(hosts, h0, h1.address, timeout_s=1.0)
    hosts.set_link(h1, up=True)
    assert reaches(hosts, h0, h1.address)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_100_mbit_link_moves_5_mb_in_the_time_its_rate_says(make_hosts):
    """tbf shapes each direction: 5 MB at 100 Mbit/s take 0.4 s (TCP/IP headers add about 4%)."""
    hosts = make_hosts(2, bandwidth=100 * MBIT)
    expected = 5e6 / (100 * MBIT)
    for src, dst in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
        assert transfer_s(hosts, src, dst, 5_000_000) == pytest.approx(expected, rel=0.3)
    fast = transfer_s(hosts, hosts[0], hosts[1], 5_000_000)
    unshaped = make_hosts(2, bandwidth=None)
    assert transfer_s(unshaped, unshaped[0], unshaped[1], 5_000_000) < fast / 3  # the shaping, not the machine, is the limit


def test_hosts_are_removed_after_the_block_and_after_an_exception(make_hosts):
    with Hosts(2) as hosts:
        stem = hosts.stem
        assert len(leftovers(stem)[0]) == 3  # two hosts and the bridge's namespace
        sleeper = hosts.popen(hosts[0], ["sleep", "600"])
    assert sleeper.poll() is not None and leftovers(stem) == ([], [])
    with pytest.raises(RuntimeError, match="boom"), Hosts(2) as hosts:
        stem = hosts.stem
        hosts.popen(hosts[1], ["sleep", "600"])
        raise RuntimeError("boom")
    assert leftovers(stem) == ([], [])


_OWNER = """
import sys, time
from runtime.hosts import Hosts
hosts = Hosts(2).__enter__()
hosts.popen(hosts[0], ["sleep", "600"])
print(hosts.stem, flush=True)
sys.stdin.readline()  # the test has seen the namespaces
{ending}
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "ending, how",
    [
        ("time.sleep(600)", signal.SIGTERM),  # the SIGTERM handler removes them
        ("raise KeyboardInterrupt", None),  # atexit removes what a with block did not
        ("sys.exit(3)", None),
    ],
)
def test_hosts_are_removed_when_their_process_ends_by_a_signal_or_an_interrupt(make_hosts, ending, how):
    script = textwrap.dedent(_OWNER.format(ending=ending))
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stem = owner.stdout.readline().strip()
    assert stem and len(leftovers(stem)[0]) == 3
    owner.stdin.write("go\n")
    owner.stdin.flush()
    if how is not None:
        owner.send_signal(how)
    assert owner.wait(30) != 0
    assert leftovers(stem) == ([], [])


def test_a_delay_is_refused_where_the_kernel_cannot_delay(make_hosts):
    probe = make_hosts(1)
    if probe.netem_missing is None:
        pytest.skip("this kernel has netem: a link delay can be shaped here")
    with pytest.raises(ConfigurationError, match="latency_s=0.001 cannot be shaped here: the kernel has no netem") as refused:
        make_hosts(2, latency_s=1e-3)
    assert "pass latency_s=0" in str(refused.value)
    assert leftovers(probe.stem.rsplit("-", 1)[0] + "-")[0] == leftovers(probe.stem)[0]  # the refused hosts were removed


def test_the_hosts_cluster_prices_a_transfer_over_two_shaped_links(tmp_path):
    cluster = hosts_cluster(2, 2, 100 * MBIT, 1e-3)
    assert cluster.device_names == ["h0/cpu0", "h0/cpu1", "h1/cpu0", "h1/cpu1"]
    assert cluster.device("h1/cpu1").host == "h1"
    n = 5e6
    shm = 20e-6  # the local preset's worker link
    assert cluster.transfer_s("h0/cpu1", "h1/cpu0", n) == pytest.approx(2 * shm + 2 * 1e-3 + n / (100 * MBIT))
    assert cluster.transfer_s("h0/cpu0", "h0/cpu1", n) == pytest.approx(2 * shm + n / 5e9)
    path = tmp_path / "hosts.json"
    cluster.save(path)
    assert Cluster.load(path) == cluster


def test_a_fixtures_cluster_is_its_shaping_plus_the_veth_latency(make_hosts):
    hosts = make_hosts(2, bandwidth=100 * MBIT)
    link = next(link for link in hosts.cluster().links if link.kind == "ethernet")
    assert (link.bandwidth, link.latency_s) == (100 * MBIT, VETH_LATENCY_S)
    with pytest.raises(ConfigurationError, match="unshaped"):
        make_hosts(1, bandwidth=None).cluster()


def test_hosts_refuse_nonsense_before_making_anything():
    with pytest.raises(ConfigurationError, match="n >= 1"):
        Hosts(0)
    with pytest.raises(ConfigurationError, match="bandwidth is bytes/s"):
        Hosts(2, bandwidth=0)


def test_where_namespaces_cannot_be_made_the_reason_says_why(monkeypatch):
    monkeypatch.setattr(net.os, "geteuid", lambda: 1000)
    assert "needs root" in net.why_unavailable()
    with pytest.raises(ConfigurationError, match="cannot make network namespaces: making network namespaces needs root"):
        Hosts(2).__enter__()
    monkeypatch.setattr(net.os, "geteuid", lambda: 0)
    monkeypatch.setattr(net.shutil, "which", lambda tool: None)
    assert net.why_unavailable() == "ip and tc not found (install iproute2)"
