"""Compare graphc's solvers on the published benchmark graphs (PipeDream, NeurIPS 2020 inputs).

Imports every graph in ../shared/benchmarks, places it on a 4-GPU PCIe box with each solver, and
prints simulated step time, the ratio to the lower bound and the proven gap; the same as
``graphc compare --models "" --benchmarks --clusters pcie-4gpu``.

    .venv/bin/python examples/compare_published_graphs.py
"""

from __future__ import annotations

from graphc.compare import benchmark_files, compare, to_markdown

SOLVERS = ("single", "m-etf", "m-sct", "heft", "auto")


def main() -> None:
    rows = compare(benchmark_files(), ["pcie-4gpu"], SOLVERS, time_limit=5.0)
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
