"""Several hosts on one Linux machine, for real: network namespaces joined by a bridge, links shaped with tc.

::

    with Hosts(2, bandwidth=12.5e6) as hosts:            # 2 hosts, 100 Mbit/s links each way
        hosts.save_cluster("hosts.json")                  # graphc plan -c hosts.json predicts them
        spawn_on_hosts(hosts, train, (plan.to_dict(),))  # torchrun on each host, rendezvous at host 0

To torch.distributed every namespace is a host of its own (its address, its network stack), so
``graphc run --nnodes 2 --node-rank i --master-addr <host 0's address>`` run in each crosses a real
(virtual) Ethernet link, shaped as a cluster describes it. Making namespaces needs root and iproute2
(:func:`why_unavailable` says why not, for a skip); link delay needs the kernel's netem.

Modules: :mod:`~runtime.hosts.net` (the ip and tc commands, shaping), :mod:`~runtime.hosts.fixture`
(:class:`Hosts`: making, running in, and removing hosts), :mod:`~runtime.hosts.topology` (the hosts as a
placement cluster), :mod:`~runtime.hosts.probe` (TCP reachability and timed transfers),
:mod:`~runtime.hosts.launch` (a function on ranks across the hosts, through torchrun on each).
"""

from runtime.hosts.fixture import GLOO_IFNAME_ENV, Host, Hosts, remove_stale
from runtime.hosts.launch import spawn_on_hosts, torchrun_argv
from runtime.hosts.net import why_unavailable
from runtime.hosts.probe import reaches, transfer_s
from runtime.hosts.topology import hosts_cluster

__all__ = ["GLOO_IFNAME_ENV", "Host", "Hosts", "hosts_cluster", "reaches", "remove_stale", "spawn_on_hosts", "torchrun_argv", "transfer_s", "why_unavailable"]
