"""graphc.app.hosts: ``graphc hosts`` runs one command on every namespace host, placeholders filled in."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from graphc.app.hosts import add_hosts_arguments, cmd_hosts
from graphc.ir.errors import ConfigurationError
from placement.cluster import Cluster
from runtime.hosts import why_unavailable

pytestmark = pytest.mark.distributed


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_hosts_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.skipif(bool(why_unavailable()), reason=f"namespace hosts cannot be made here: {why_unavailable()}")
def test_every_host_runs_the_command_with_its_own_rank_and_host_0s_address(tmp_path, capsys):
    cluster = tmp_path / "hosts.json"
    say = "import json, sys; print(json.dumps(sys.argv[1:])); sys.exit({'0': 0, '1': 1, '2': 2}[sys.argv[1]])"  # braces of its own
    argv = ["-n", "3", "--mbit", "100", "-o", str(cluster), "--", sys.executable, "-c", say, "{node_rank}", "{nnodes}", "{master_addr}", "{host}"]
    assert cmd_hosts(parse(*argv)) == 1  # host 1's command exits 1, host 2's 2: the first non-zero status
    out = capsys.readouterr().out
    address = out.split("h0: ", 1)[1].split()[0]
    said = [json.loads(line) for line in out.splitlines() if line.startswith("[")]
    assert said == [[str(i), "3", address, f"h{i}"] for i in range(3)]
    loaded = Cluster.load(cluster)
    assert len(loaded) == 3 and next(link for link in loaded.links if link.kind == "ethernet").bandwidth == 100e6 / 8


def test_a_command_is_required():
    with pytest.raises(ConfigurationError, match="give the command each host runs"):
        cmd_hosts(parse("-n", "2"))
