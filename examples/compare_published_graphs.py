"""Compare graphc's solvers on the published benchmark graphs (PipeDream, NeurIPS 2020 inputs).

Imports every graph in ../shared/benchmarks, places it on a 4-GPU PCIe box with each solver (and one
pipelined plan per graph), and prints the summary table (simulated step time over the lower bound, the
best in bold, auto's proven gap) and then every row; the same as
``graphc compare --models "" --benchmarks --clusters pcie-4gpu --solvers single,m-etf,m-sct,heft,auto -t 5``.

    .venv/bin/python examples/compare_published_graphs.py
"""

from __future__ import annotations

from graphc.app.compare import compare, to_markdown, to_summary_markdown
from graphc.importers import benchmark_files

SOLVERS = ("single", "m-etf", "m-sct", "heft", "auto")


def main() -> None:
    rows = compare(benchmark_files(), ["pcie-4gpu"], SOLVERS, objectives=("latency", "throughput"), time_limit_s=5.0)
    print(to_summary_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
