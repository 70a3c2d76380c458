"""``graphc hosts``: run one command on every host of a set of namespace hosts made for the purpose.

``graphc hosts -n 2 --mbit 100 -o hosts.json -- graphc run gpt2 --plan plan.json --nnodes {nnodes}
--node-rank {node_rank} --master-addr {master_addr}`` makes 2 hosts (:class:`runtime.hosts.Hosts`:
network namespaces, links shaped to 100 Mbit/s each way), writes them as a cluster (``graphc plan -c
hosts.json`` predicts them), runs the command on every host at once with its placeholders filled in
for that host (``{node_rank}``, ``{nnodes}``, ``{master_addr}``: host 0's address, ``{host}``: ``h0``,
``h1``, ...), prints each host's output under its name, and removes the hosts. The exit status is the
first non-zero status of a host's command, else 0. Needs root (network namespaces); link delay needs
the kernel's netem.
"""

from __future__ import annotations

import argparse
import sys

from graphc.app.argtypes import non_negative_int, positive_int, positive_number
from graphc.ir.errors import ConfigurationError
from runtime.hosts import Host, Hosts


def add_hosts_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``graphc hosts``."""
    parser.usage = "%(prog)s [-n N] [--mbit MBIT] [-o CLUSTER.json] -- COMMAND ..."
    parser.add_argument("-n", "--hosts", type=positive_int, default=2, help="how many hosts (default: %(default)s)")
    parser.add_argument("--mbit", type=positive_number, default=1000.0, help="each host's link, Mbit/s each way (default: %(default)s)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="each host's link delay, each way; needs netem (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=1, help="CPU worker ranks per host in the cluster (default: %(default)s)")
    parser.add_argument("-o", "--cluster-out", help="write the hosts as a cluster JSON for graphc plan -c (default: not written)")
    parser.add_argument("--timeout", type=non_negative_int, default=3600, help="seconds before the commands are killed (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command each host runs, after --, with {node_rank}, {nnodes}, {master_addr}, {host}")


def host_command(command: list[str], hosts: Hosts, host: Host) -> list[str]:
    """``command`` with the placeholders of  placeholders (module docstring) filled in for ``host``; other braces (a
    Python one-liner's dict) are left as they are."""
    values = {"node_rank": host.index, "nnodes": len(hosts), "master_addr": hosts[0].address, "host": host.name}
    filled = []
    for word in command:
        for name, value in values.items():
            word = word.replace("{" + name + "}", str(value))
        filled.append(word)
    return filled


def cmd_hosts(args: argparse.Namespace) -> int:
    """``graphc hosts``: make the hosts, run the command on each, print their outputs; the exit status."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigurationError("graphc hosts: give the command each host runs after --, e.g. -- hostname -I")
    if args.delay_ms < 0:
        raise ConfigurationError(f"graphc hosts: --delay-ms must be >= 0, got {args.delay_ms}")
    with Hosts(args.hosts, bandwidth=args.mbit * 1e6 / 8, latency_s=args.delay_ms / 1e3, workers=args.workers) as hosts:
        if args.cluster_out:
            print(f"wrote {hosts.save_cluster(args.cluster_out)}")
        for host in hosts:
            print(f"{host.name}: {host.address} (namespace {host.namespace})")
        finished = hosts.run_all({h: host_command(command, hosts, h) for h in hosts}, timeout_s=args.timeout)
    status = 0
    for host, done in zip(hosts, finished):
        print(f"── {host.name}: exit status {done.returncode}")
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        status = status or done.returncode
    return status
