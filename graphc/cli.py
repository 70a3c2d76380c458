"""The ``graphc`` command line: trace zoo or user models, import benchmark graphs, run the demo.

Each sub-command is one function ``cmd_<name>(args) -> int``; :func:`main` parses and dispatches and
turns a :class:`~graphc.errors.GraphcError` into a one-paragraph message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from graphc import zoo
from graphc.errors import GraphcError
from graphc.graph import Graph
from graphc.importers import load_benchmark
from graphc.report import graph_totals_table, op_breakdown_table
from graphc.tracing import TracedProgram, trace


def _console(args: argparse.Namespace) -> Console:
    """Rich output; wide enough for the plan tables when not printing to a terminal (logs, CI)."""
    return Console(quiet=args.quiet, width=None if sys.stdout.isatty() else 140)


def _load_user_model(spec: str, batch_size: int) -> tuple[torch.nn.Module, tuple]:
    """``path.py:Name``: ``Name`` is an nn.Module class (built with no arguments) or a function returning
    ``(model, example_inputs)``; a class needs an ``example_inputs(batch_size)`` static method."""
    path, _, name = spec.partition(":")
    if not name or not path.endswith(".py"):
        raise GraphcError(f"model {spec!r}: expected a zoo name ({', '.join(zoo.NAMES)}) or path.py:Name")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or not Path(path).is_file():
        raise GraphcError(f"model {spec!r}: no such file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    target = getattr(module, name, None)
    if target is None:
        raise GraphcError(f"model {spec!r}: {path} defines no {name!r}")
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        if not hasattr(target, "example_inputs"):
            raise GraphcError(f"model {spec!r}: give {name} a static method example_inputs(batch_size)")
        inputs = target.example_inputs(batch_size)
        return target(), inputs if isinstance(inputs, tuple) else (inputs,)
    model, inputs = target(batch_size)
    return model, inputs if isinstance(inputs, tuple) else (inputs,)


def trace_model_spec(spec: str, batch_size: int, size: str, granularity: str, device: str) -> TracedProgram:
    """Trace a zoo network by name, or a user model given as ``path.py:Name``."""
    if spec in zoo.NAMES:
        zm = zoo.build(spec, batch_size=batch_size, size=size, device=device)
        return trace(zm.model, zm.example_inputs, granularity=granularity, name=spec)
    model, inputs = _load_user_model(spec, batch_size)
    return trace(model, inputs, granularity=granularity, name=Path(spec.partition(":")[0]).stem)


def cmd_trace(args: argparse.Namespace) -> int:
    console = _console(args)
    start = time.perf_counter()
    with console.status(f"tracing and annotating {args.model} ..."):
        program = trace_model_spec(args.model, args.batch_size, args.size, args.granularity, args.device)
    console.print(f"traced in {time.perf_counter() - start:.1f} s with torch.{program.method}")
    _show(console, program.graph)
    if args.out:
        program.graph.save(args.out)
        console.print(f"wrote {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    console = _console(args)
    graph = load_benchmark(args.file)
    _show(console, graph)
    if args.out:
        graph.save(args.out)
        console.print(f"wrote {args.out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Trace (or import) a model, place it, print the plan's summary and save it."""
    from graphc.compiler import resolve_cluster
    from placement.solvers import solve

    console = _console(args)
    cluster = resolve_cluster(args.cluster)
    with console.status(f"tracing {args.model} ..."):
        graph = _graph_for(args.model, args.batch_size, args.size, args.granularity)
    with console.status(f"placing {graph.name} on {cluster.name} with {args.solver} (at most {args.time_limit:g} s) ..."):
        plan = solve(graph, cluster, objective=args.objective, time_limit=args.time_limit, seed=args.seed, solver=args.solver)
    console.print(plan.summary())
    plan.save(args.out)
    console.print(f"wrote {args.out}")
    return 0


def _graph_for(spec: str, batch_size: int, size: str, granularity: str) -> Graph:
    """A zoo network or path.py:Name (traced on the meta device where possible), or a benchmark file."""
    if spec.endswith((".txt", ".json")) and ":" not in spec:
        return load_benchmark(spec)
    return trace_model_spec(spec, batch_size, size, granularity, device="meta" if spec in zoo.NAMES else "cpu").graph


def cmd_show(args: argparse.Namespace) -> int:
    """Summarise a saved plan and write its trace and pictures."""
    from placement.plan import Plan

    console = _console(args)
    plan = Plan.load(args.plan)
    console.print(plan.summary())
    for path, write in ((args.trace, plan.to_chrome_trace), (args.gantt, plan.gantt), (args.dot, plan.to_dot)):
        if path:
            write(path)
            console.print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Models x clusters x solvers -> Markdown, CSV and a bar chart (and the README's table with --readme)."""
    import os

    from graphc.compare import (
        bar_chart,
        compare,
        readme_block,
        replace_readme_block,
        to_markdown,
        to_summary_markdown,
        write_csv,
    )
    from graphc.importers import benchmark_files

    console = _console(args)
    graphs = [g for g in args.models.split(",") if g]
    if args.benchmarks:
        graphs += benchmark_files()
    if not graphs:
        raise GraphcError("compare: no graphs; name zoo models or files with --models, or add --benchmarks")
    if args.readme:
        readme_block(Path(args.readme))  # a README without the markers fails now, not after the run
    started = time.perf_counter()
    rows = compare(graphs, args.clusters.split(","), args.solvers.split(","), objectives=args.objectives.split(","),
                   batch_size=args.batch_size, time_limit=args.time_limit, seed=args.seed, quiet=args.quiet)  # fmt: skip
    seconds = time.perf_counter() - started
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = to_summary_markdown(rows)
    (out / "compare.md").write_text(summary + "\n" + to_markdown(rows))
    write_csv(rows, out / "compare.csv")
    bar_chart(rows, out / "compare.png")
    console.print(summary)
    models = args.models or '""'
    command = (f"graphc compare --models {models}{' --benchmarks' if args.benchmarks else ''} "
               f"--clusters {args.clusters} --solvers {args.solvers} --objectives {args.objectives} "
               f"-b {args.batch_size} -t {args.time_limit:g} --seed {args.seed}")  # fmt: skip
    took = f"{len(rows)} plans in {seconds / 60:.1f} min on {os.cpu_count()} CPU cores"
    console.print(f"{took}; wrote {out / 'compare.md'} (every row), {out / 'compare.csv'}, {out / 'compare.png'}")
    if args.readme:
        block = (f"Generated by `{command} --readme {args.readme}` ({took}; every row: "
                 f"`{out / 'compare.md'}`). Cells: simulated training step time over the best lower bound proved for that graph and cluster; the best plan in bold.\n\n{summary}")  # fmt: skip
        replace_readme_block(Path(args.readme), block)
        console.print(f"updated the table in {args.readme}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job (:mod:`graphc.demo`): trace, profile, place, execute, check against eager, and
    compare predicted with measured step time."""
    from graphc.demo import run_demo

    return run_demo(_console(args))


def _show(console: Console, graph: Graph) -> None:
    console.print(graph_totals_table(graph))
    console.print(op_breakdown_table(graph))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphc", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="what `make demo` runs: trace, profile, place, execute, check against eager, time")
    demo.set_defaults(run=cmd_demo)

    traced = commands.add_parser("trace", help="trace and annotate a model; print its cost graph")
    traced.add_argument("model", help=f"a zoo network ({', '.join(zoo.NAMES)}) or path.py:Name")
    traced.add_argument("-b", "--batch-size", type=int, default=1)
    traced.add_argument("--size", choices=zoo.SIZES, default="full", help="zoo configuration")
    traced.add_argument("--granularity", choices=("op", "module"), default="module")
    traced.add_argument("--device", default="meta", help="where zoo weights live (meta: no memory)")
    traced.add_argument("-o", "--out", help="save the cost graph as JSON")
    traced.set_defaults(run=cmd_trace)

    planned = commands.add_parser("plan", help="place a model on a cluster; print and save the plan")
    planned.add_argument("model", help="a zoo network, path.py:Name, or a benchmark graph file (.txt/.json)")
    planned.add_argument("-b", "--batch-size", type=int, default=32)
    planned.add_argument("--size", choices=zoo.SIZES, default="full", help="zoo configuration")
    planned.add_argument("--granularity", choices=("op", "module"), default="module")
    planned.add_argument("-c", "--cluster", default="pcie-4gpu", help="a preset name or a cluster JSON file")
    planned.add_argument("-s", "--solver", default="auto", help="auto, cp-sat, m-etf, m-sct, heft, ... (placement.solvers)")
    planned.add_argument("--objective", choices=("latency", "throughput"), default="latency")
    planned.add_argument("-t", "--time-limit", type=float, default=30.0, help="seconds the solver may take")
    planned.add_argument("--seed", type=int, default=0)
    planned.add_argument("-o", "--out", default="plan.json", help="where to save the plan (JSON)")
    planned.set_defaults(run=cmd_plan)

    shown = commands.add_parser("show", help="summarise a saved plan; write its trace and pictures")
    shown.add_argument("plan", help="a plan.json written by `graphc plan`")
    shown.add_argument("--trace", help="write the simulated timeline for Perfetto / chrome://tracing")
    shown.add_argument("--gantt", help="write the timeline as a PNG")
    shown.add_argument("--dot", help="write the graph coloured by device (Graphviz)")
    shown.set_defaults(run=cmd_show)

    compared = commands.add_parser("compare", help="models x clusters x solvers -> table (md, csv) and chart")
    compared.add_argument("--models", default=",".join(zoo.NAMES), help="comma-separated zoo names or benchmark files")
    compared.add_argument("--benchmarks", action="store_true", help="add every published benchmark graph (../shared/benchmarks)")
    compared.add_argument("--clusters", default="pcie-4gpu,dgx1-v100")
    compared.add_argument("--solvers", default="single,round-robin,m-topo,m-etf,m-sct,heft,critical-path,auto")
    compared.add_argument("-b", "--batch-size", type=int, default=32)
    compared.add_argument("-t", "--time-limit", type=float, default=10.0, help="seconds per solve")
    compared.add_argument("--seed", type=int, default=0)
    compared.add_argument("--objectives", default="latency,throughput",
                          help="latency: every solver; throughput: one pipelined plan by auto per graph and cluster")  # fmt: skip
    compared.add_argument("--out-dir", default="results/compare")
    compared.add_argument("--readme", help="also put the summary table between the compare markers of this Markdown file")
    compared.set_defaults(run=cmd_compare)

    from runtime.launch import add_run_arguments, cmd_run

    ran = commands.add_parser("run", help="train a zoo model placed by a plan: one rank per device, via torchrun")
    add_run_arguments(ran)
    ran.set_defaults(run=cmd_run)

    imported = commands.add_parser("import", help="import a published benchmark graph; print it")
    imported.add_argument("file", help="a PipeDream .txt or dnn-partitioning .json file")
    imported.add_argument("-o", "--out", help="save the cost graph as JSON")
    imported.set_defaults(run=cmd_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except GraphcError as exc:
        print(f"graphc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
