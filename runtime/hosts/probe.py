"""TCP probes between namespace hosts: does a host reach an address, and how long do n bytes take.

Each probe is a few lines of Python run in the hosts (``python -c``) with plain sockets: the machine
has no ``ping``, and a TCP stream is what torch.distributed's gloo sends over.

A timed transfer (:func:`transfer_s`) is measured by the sender, from the connection being made to the
receiver's one-byte acknowledgement of the last byte:

    t = n / bandwidth + one round trip (the acknowledgement) + the time TCP takes to reach the rate
"""

from __future__ import annotations

import sys

from graphc.ir.errors import RuntimeFault
from runtime.hosts.fixture import Host, Hosts

# A port every probe listens on: each fixture's namespaces are fresh, so it is free there.
PROBE_PORT = 5201

_RECEIVE = """
import socket, sys
n = int(sys.argv[1])
server = socket.create_server(("0.0.0.0", int(sys.argv[2])))
connection, _ = server.accept()
got = 0
while got < n:
    chunk = connection.recv(1 << 20)
    if not chunk:
        sys.exit("the sender closed the connection after %d of %d bytes" % (got, n))
    got += len(chunk)
connection.sendall(b"k")
"""

_SEND = """
import socket, sys, time
address, port, n, patience = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + patience
while True:
    try:
        connection = socket.create_connection((address, port), timeout=patience)
        break
    except ConnectionRefusedError:  # the receiver is not listening yet
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
start = time.perf_counter()
payload = bytes(1 << 20)
sent = 0
while sent < n:
    sent += connection.send(payload[: min(len(payload), n - sent)])
if connection.recv(1) != b"k":
    sys.exit("no acknowledgement from the receiver")
print(time.perf_counter() - start)
"""

_CONNECT = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("reached")
except ConnectionRefusedError:
    print("reached")  # the address answered: nothing listens on the port
except OSError as exc:
    print("unreachable", exc)
"""


def reaches(hosts: Hosts, host: Host, address: str, port: int = PROBE_PORT, timeout_s: float = 2.0) -> bool:
    """Whether ``host`` reaches ``address`` over TCP: a connection to ``port`` is accepted or refused
    (the address answered) rather than failing for want of a route or timing out."""
    done = hosts.run(host, [sys.executable, "-c", _CONNECT, address, str(port), str(timeout_s)], timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeFault(f"hosts: the connection probe from {host.name} failed: {done.stderr.strip()}")
    return done.stdout.startswith("reached")


def transfer_s(hosts: Hosts, src: Host, dst: Host, nbytes: int, timeout_s: float = 120.0) -> float:
    """Seconds ``src`` takes to send ``nbytes`` to ``dst`` over TCP (module docstring)."""
    receive = [sys.executable, "-c", _RECEIVE, str(nbytes), str(PROBE_PORT)]
    send = [sys.executable, "-c", _SEND, dst.address, str(PROBE_PORT), str(nbytes), "10"]
    received, sent = hosts.run_all({dst: receive, src: send}, timeout_s)
    if received.returncode != 0 or sent.returncode != 0:
        raise RuntimeFault(
            f"hosts: the transfer {src.name} -> {dst.name} failed: receiver said {received.stderr.strip()!r}, "
            f"sender said {sent.stderr.strip()!r}"
        )
    return float(sent.stdout.strip())
