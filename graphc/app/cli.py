"""The ``graphc`` command line: trace zoo or user models, import benchmark graphs, run the demo.

Each sub-command is one function ``cmd_<name>(args) -> int``; :func:`main` parses and dispatches.
A user's mistake ends in one line on stderr and exit status 2: a bad option value is refused by
argparse before anything runs (the ``type=`` functions below), and a :class:`~graphc.ir.errors.GraphcError`
raised later (a missing file, an unknown model) is printed as one line. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
from rich.console import Console
from rich.table import Column, Table

from graphc.app.argtypes import output_file, positive_int, positive_number
from graphc.app.calibrate import Calibration, calibrate
from graphc.app.compare import (
    bar_chart,
    compare,
    readme_block,
    replace_readme_block,
    summary_tables,
    to_markdown,
    to_summary_markdown,
    write_csv,
)
from graphc.app.demo import run_demo
from graphc.app.hosts import add_hosts_arguments, cmd_hosts
from graphc.app.report import graph_totals_table, op_breakdown_table
from graphc.app.run import add_run_arguments, cmd_run
from graphc.frontend import zoo
from graphc.frontend.tracing import TracedProgram, trace
from graphc.ir.errors import ConfigurationError, GraphcError, MissingFileError
from graphc.ir.graph import Graph
from graphc.ir.importers import benchmark_files, load_benchmark
from placement.cluster import Cluster
from placement.hybrid import DEFAULT_TARGET, PARALLEL, SYNCS
from placement.plan import Plan
from placement.presets import cluster_presets
from placement.solvers import SOLVERS, solve
from placement.time_to_accuracy import Run, runs_from_convergence

__all__ = ["DEFAULT_BATCH_SIZE", "build_parser", "main", "trace_model_spec"]

#: The batch size every command assumes when ``-b`` is not given (the zoo's published configurations).
DEFAULT_BATCH_SIZE = 32
#: The width of the tables when output goes to a file or a pipe rather than a terminal.
NON_TTY_WIDTH = 100


def _console(args: argparse.Namespace, *, stderr: bool = False) -> Console:
    """Rich output (on stderr for warnings); 100 columns when not printing to a terminal (logs, CI)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(quiet=args.quiet, stderr=stderr, width=None if stream.isatty() else NON_TTY_WIDTH)


# -- option values: argparse refuses a bad one with a one-line message and exit status 2 -------------
def cluster_spec(text: str) -> str:
    """``-c``: a cluster preset name or a cluster JSON file, checked now so that a typo fails before any
    tracing; the command resolves it again (:meth:`placement.Cluster.resolve`, cheap)."""
    try:
        Cluster.resolve(text)
    except GraphcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def preset_name(text: str) -> str:
    """``--clusters`` of compare: a cluster preset name (:func:`placement.presets.cluster_presets`)."""
    if text not in cluster_presets():
        raise argparse.ArgumentTypeError(f"no cluster preset {text!r}; presets: {', '.join(cluster_presets())}")
    return text


def solver_name(text: str) -> str:
    """``-s``: a name registered in :data:`placement.solvers.SOLVERS`."""
    if text not in SOLVERS:
        raise argparse.ArgumentTypeError(f"unknown solver {text!r}; solvers: {', '.join(SOLVERS)}")
    return text


def comma_list(item: Callable[[str], str]) -> Callable[[str], list[str]]:
    """A ``type=`` for ``a,b,c`` that checks every item with ``item`` and refuses an empty list."""

    def parse(text: str) -> list[str]:
        items = [item(part) for part in text.split(",") if part]
        if not items:
            raise argparse.ArgumentTypeError(f"expected one or more comma-separated names, got {text!r}")
        return items

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, unless there is none to show (None, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with every default shown in the help, and a mistake reported in one line (the usage is
    one ``-h`` away) with exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _load_user_model(spec: str, batch_size: int) -> tuple[torch.nn.Module, tuple]:
    """``path.py:Name``: ``Name`` is an nn.Module class (built with no arguments) or a function returning
    ``(model, example_inputs)``; a class needs an ``example_inputs(batch_size)`` static method."""
    path, _, name = spec.partition(":")
    if not name or not path.endswith(".py"):
        raise ConfigurationError(f"model {spec!r}: expected a zoo name ({', '.join(zoo.NAMES)}) or path.py:Name")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or not Path(path).is_file():
        raise MissingFileError(f"model {spec!r}: no such file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    target = getattr(module, name, None)
    if target is None:
        raise ConfigurationError(f"model {spec!r}: {path} defines no {name!r}")
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        if not hasattr(target, "example_inputs"):
            raise ConfigurationError(f"model {spec!r}: give {name} a static method example_inputs(batch_size)")
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
    """Trace and annotate a model; print its cost graph and save it when ``-o`` says where."""
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
    """Read a graph file (PipeDream, dnn-partitioning or graphc JSON); print it, save it as graphc JSON
    when ``-o`` says where."""
    console = _console(args)
    graph = load_benchmark(args.file)
    _show(console, graph)
    if args.out:
        graph.save(args.out)
        console.print(f"wrote {args.out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Trace (or import) a model, place it, print the plan's summary; save it when ``-o`` says where."""
    console = _console(args)
    cluster = Cluster.resolve(args.cluster)
    parallel = _parallel_options(args)
    runs = _convergence_runs(args)
    cost_model = None
    if args.calibrate:
        if cluster.name != "local":
            raise ConfigurationError(f"--calibrate measures this machine's CPU workers: use it with -c local, not {cluster.name!r}")
        program, calibration = _calibrated(args, console, workers=len(cluster.devices))
        graph, cluster, cost_model = program.graph, calibration.cluster, calibration.cost_model
    else:
        with console.status(f"tracing or reading {args.model} ..."):
            graph = _graph_for(args.model, args.batch_size, args.size, args.granularity)
    with console.status(f"placing {graph.name} on {cluster.name} with {args.solver} (at most {args.time_limit:g} s) ..."):
        plan = solve(graph, cluster, objective=args.objective, time_limit_s=args.time_limit, seed=args.seed,
                     solver=args.solver, cost_model=cost_model, convergence=runs, target=args.target, **parallel)  # fmt: skip
    console.print(plan.summary())
    if "parallel" in plan.settings:
        console.print(f"parallel layout: {plan.settings['parallel']['reason']}")
        choice = plan.settings["parallel"].get("sync_choice")
        if choice is not None:
            console.print(f"sync by time to {choice.get('target', args.target):.0%} accuracy: " + (choice.get("reason") or f"none ({choice.get('none')})"))
    if cluster.name == "local" and not args.calibrate:
        _warn_uncalibrated(args)
    if args.out:
        plan.save(args.out)
        console.print(f"wrote {args.out}")
    else:
        console.print("not saved: add -o plan.json to keep it (then graphc show plan.json, graphc run --plan plan.json)")
    return 0


def _parallel_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--parallel``, ``--sync`` and ``--servers`` as :func:`placement.solve` takes them, checked before
    any tracing: with ``--objective throughput`` the layout defaults to ``auto`` (data parallel, pipeline
    or hybrid, the fastest simulated); with ``latency`` they are refused, as are ``--servers`` without
    ``--sync parameter-server``."""
    given = [f"--{k}" for k in ("parallel", "sync", "servers") if getattr(args, k) is not None]
    if given and args.objective != "throughput":
        raise ConfigurationError(f"{', '.join(given)}: replicas and their sync are planned for --objective throughput, not {args.objective}")
    if args.servers and args.sync != "parameter-server":
        raise ConfigurationError(f"--servers {','.join(args.servers)}: servers hold parameters with --sync parameter-server, not --sync {args.sync or 'auto'}")
    parallel = args.parallel or ("auto" if args.objective == "throughput" else None)
    given_values = {"parallel": parallel, "sync": args.sync, "servers": args.servers}
    return {k: v for k, v in given_values.items() if v is not None}


def _convergence_runs(args: argparse.Namespace) -> list[Run] | None:
    """The runs of ``--convergence`` (examples/elastic_convergence.py's JSON), read before any tracing;
    None without it. It needs ``--objective throughput`` (replicas); ``--target`` is a held-out accuracy."""
    if args.convergence is None:
        if args.target is not None:
            raise ConfigurationError("--target is the held-out accuracy of --convergence's runs: pass --convergence too")
        return None
    if args.objective != "throughput":
        raise ConfigurationError(f"--convergence chooses how replicas synchronise, which --objective throughput plans, not {args.objective}")
    path = Path(args.convergence)
    if not path.is_file():
        raise MissingFileError(f"--convergence {path}: no such file; examples/elastic_convergence.py --out DIR writes DIR/convergence.json")
    if args.target is None:
        args.target = DEFAULT_TARGET
    elif not 0 < args.target <= 1:
        raise ConfigurationError(f"--target {args.target}: a held-out accuracy, 0 < target <= 1 (e.g. 0.95)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--convergence {path}: not JSON ({exc})") from None
    return runs_from_convergence(doc, str(path))


def _calibrated(args: argparse.Namespace, console: Console, workers: int = 2) -> tuple[TracedProgram, Calibration]:
    """``graphc calibrate`` and ``plan --calibrate``: the zoo model traced with real weights and the
    ``local`` cluster of ``workers`` CPU workers calibrated for it (:func:`graphc.app.calibrate.calibrate`:
    its ops profiled on this CPU and scaled to its eager step, the link between two ranks and the
    slowdown of workers computing at once measured;
    through the cache unless ``--refresh``), printed as it goes."""
    if args.model not in zoo.NAMES:
        raise ConfigurationError(f"--calibrate times an eager training step, which needs a zoo model ({', '.join(zoo.NAMES)}), not {args.model!r}")
    build_kwargs = {"batch_size": args.batch_size, "size": args.size}
    zm = zoo.build(args.model, **build_kwargs)
    with console.status(f"tracing {args.model} and calibrating the local cluster for it ..."):
        program = trace(zm.model, zm.example_inputs, granularity=args.granularity, name=args.model)
        found = calibrate(zm.model, zm.example_inputs, loss=zm.loss, program=program, workers=workers,
                          refresh=args.refresh, console=console, rebuild=(args.model, build_kwargs))  # fmt: skip
    return program, found


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrate the ``local`` cluster for a zoo model on this machine (or load it from the cache) and
    print what was measured and where it is cached."""
    _calibrated(args, _console(args))
    return 0


def _warn_uncalibrated(args: argparse.Namespace) -> None:
    """The ``local`` preset's CPU figures (peak FLOP/s, memory bandwidth, link) are assumptions: say so
    under the prediction, and how to calibrate them (a step measured at 23 ms was predicted at 3.5 ms)."""
    _console(args, stderr=True).print(
        "[bold yellow]warning: `local`'s CPU figures are assumptions, not measurements: the prediction may be far off."
        "[/bold yellow]\n[yellow]Add --calibrate to profile the ops on this CPU and measure the link, as `graphc demo` does."
        "[/yellow]"
    )


def _graph_for(spec: str, batch_size: int, size: str, granularity: str) -> Graph:
    """A zoo network or path.py:Name (traced on the meta device where possible), or a benchmark file."""
    if spec.endswith((".txt", ".json")) and ":" not in spec:
        return load_benchmark(spec)
    return trace_model_spec(spec, batch_size, size, granularity, device="meta" if spec in zoo.NAMES else "cpu").graph


def cmd_show(args: argparse.Namespace) -> int:
    """Summarise a saved plan and write its trace and pictures."""
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
    console = _console(args)
    graphs = [g for g in args.models.split(",") if g]
    if args.benchmarks:
        graphs += benchmark_files()
    if not graphs:
        raise ConfigurationError("compare: no graphs; name zoo models or files with --models, or add --benchmarks")
    if args.readme:
        readme_block(Path(args.readme))  # a README without the markers fails now, not after the run
    started = time.perf_counter()
    rows = compare(graphs, args.clusters, args.solvers, objectives=args.objectives.split(","),
                   batch_size=args.batch_size, time_limit_s=args.time_limit, seed=args.seed, quiet=args.quiet)  # fmt: skip
    seconds = time.perf_counter() - started
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = to_summary_markdown(rows)
    (out / "compare.md").write_text(summary + "\n" + to_markdown(rows))
    write_csv(rows, out / "compare.csv")
    bar_chart(rows, out / "compare.png")
    console.print(summary_tables(rows))
    models = args.models or '""'
    command = (f"graphc compare --models {models}{' --benchmarks' if args.benchmarks else ''} "
               f"--clusters {','.join(args.clusters)} --solvers {','.join(args.solvers)} --objectives {args.objectives} "
               f"-b {args.batch_size} -t {args.time_limit:g} --seed {args.seed}")  # fmt: skip
    took = f"{len(rows)} plans in {seconds / 60:.1f} min on {os.cpu_count()} CPU cores"
    console.print(f"{took}; wrote {out / 'compare.md'} (every row), {out / 'compare.csv'}, {out / 'compare.png'}")
    if args.readme:
        block = (f"Generated by `{command} --readme {args.readme}` ({took}; every row: "
                 f"`{out / 'compare.md'}`). Cells: simulated training step time over the best lower bound proved for that graph and cluster; the best plan in bold.\n\n{summary}")  # fmt: skip
        replace_readme_block(Path(args.readme), block)
        console.print(f"updated the table in {args.readme}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    """List the cluster presets: devices, hosts and links of each."""
    table = Table(Column("preset", no_wrap=True), "devices", "hosts", "links", "description", title="cluster presets (-c NAME)")
    for name in cluster_presets():
        cluster = Cluster.preset(name)
        kinds = Counter(d.kind for d in cluster.devices)
        links = sorted({link.kind for link in cluster.links})
        devices = ", ".join(f"{count} x {kind}" for kind, count in kinds.items())
        table.add_row(name, devices, str(len(cluster.hosts)), ", ".join(links), cluster.description)
    _console(args).print(table)
    return 0


def cmd_solvers(args: argparse.Namespace) -> int:
    """List the registered solvers with one line each."""
    table = Table("solver", "what it does", title="solvers (-s NAME); throughput (pipelined) plans: auto")
    for name, description in solver_descriptions().items():
        table.add_row(name, description)
    _console(args).print(table)
    return 0


def solver_descriptions() -> dict[str, str]:
    """Solver name -> one line, from :data:`placement.solvers.SOLVERS`: the first line of the solver's
    module docstring where that module registers one solver, else of the function's own docstring; a
    second name of a solver says whose."""
    first_name: dict[Callable, str] = {}
    modules = [fn.__module__ for fn in set(SOLVERS.values())]
    described = {}
    for name, fn in SOLVERS.items():
        if fn in first_name:
            described[name] = f"another name for {first_name[fn]}"
            continue
        first_name[fn] = name
        owner = sys.modules[fn.__module__] if modules.count(fn.__module__) == 1 else fn
        described[name] = (inspect.getdoc(owner) or "").partition("\n")[0].replace("``", "")
    return described


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job (:mod:`graphc.app.demo`): trace, profile, place, execute, check against eager, and
    compare predicted with measured step time."""
    return run_demo(_console(args)).exit_code


def _show(console: Console, graph: Graph) -> None:
    """A cost graph's totals and its ops by kind."""
    console.print(graph_totals_table(graph))
    console.print(op_breakdown_table(graph))


def build_parser() -> argparse.ArgumentParser:
    """The ``graphc`` parser: every option with help and its default shown, every value checked."""
    parser = _Parser(prog="graphc", description="Trace PyTorch models into cost graphs, place them on clusters, run the plans.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('graphc')}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    calibrated = commands.add_parser("calibrate", help="measure the local cluster for a zoo model on this machine (cached)")
    calibrated.add_argument("model", choices=zoo.NAMES, metavar="model", help=f"a zoo network ({', '.join(zoo.NAMES)})")
    _add_model_arguments(calibrated)
    calibrated.add_argument("--refresh", action="store_true", help="measure again even when a calibration is cached")
    calibrated.set_defaults(run=cmd_calibrate)

    demo = commands.add_parser("demo", help="what `make demo` runs: trace, profile, place, execute, check against eager, time")
    demo.set_defaults(run=cmd_demo)

    traced = commands.add_parser("trace", help="trace and annotate a model; print its cost graph")
    traced.add_argument("model", help=f"a zoo network ({', '.join(zoo.NAMES)}) or path.py:Name")
    _add_model_arguments(traced)
    traced.add_argument("--device", default="meta", help="where zoo weights live (meta: no memory)")
    traced.add_argument("-o", "--out", type=output_file, help="save the cost graph as JSON (graphc plan and import read it)")
    traced.set_defaults(run=cmd_trace)

    planned = commands.add_parser("plan", help="place a model on a cluster; print the plan (and save it with -o)")
    planned.add_argument("model", help="a zoo network, path.py:Name, or a graph file: graphc JSON (graphc trace -o), "
                                       "PipeDream .txt, dnn-partitioning .json")  # fmt: skip
    _add_model_arguments(planned)
    planned.add_argument("-c", "--cluster", type=cluster_spec, default="pcie-4gpu", help="a preset (graphc presets) or a cluster JSON file")
    planned.add_argument("-s", "--solver", type=solver_name, default="auto", help="a solver name (graphc solvers)")
    planned.add_argument("--objective", choices=("latency", "throughput"), default="latency",
                         help="latency: one step as fast as possible; throughput: pipelined (auto only)")  # fmt: skip
    planned.add_argument("--parallel", choices=PARALLEL,
                         help="throughput: replicas and pipelines: auto (default; the fastest simulated of data parallel, "
                              "pipeline and hybrid), data, pipeline (the pipeline solver, PipeDream replicas) or hybrid")  # fmt: skip
    planned.add_argument("--sync", choices=SYNCS,
                         help="throughput: how replicas combine gradients: auto (ring or hierarchical all-reduce and "
                              "bucket size by simulation), ring, hierarchical, parameter-server")  # fmt: skip
    planned.add_argument("--servers", type=comma_list(str),
                         help="with --sync parameter-server: the server devices, e.g. cpu0,cpu1 (default: the cluster's CPUs)")  # fmt: skip
    planned.add_argument("--convergence", metavar="PATH",
                         help="throughput: also choose how the replicas synchronise (all-reduce, EASGD, local SGD, DiLoCo) by "
                              "predicted time to --target accuracy from these measured runs (examples/elastic_convergence.py)")  # fmt: skip
    planned.add_argument("--target", type=positive_number, help="with --convergence: the held-out accuracy to reach (default: 0.95)")
    planned.add_argument("-t", "--time-limit", type=positive_number, default=30.0, help="seconds the solver may take (time_limit_s)")
    planned.add_argument("--seed", type=int, default=0, help="fixes every random choice of the solver")
    planned.add_argument("--calibrate", action="store_true",
                         help="with -c local and a zoo model: profile its ops on this CPU and measure the link first "
                              "(graphc calibrate; cached)")  # fmt: skip
    planned.add_argument("--refresh", action="store_true", help="with --calibrate: measure again even when cached")
    planned.add_argument("-o", "--out", type=output_file, help="save the plan as JSON here (nothing is written without it)")
    planned.set_defaults(run=cmd_plan)

    shown = commands.add_parser("show", help="summarise a saved plan; write its trace and pictures")
    shown.add_argument("plan", help="a plan.json written by `graphc plan -o`")
    shown.add_argument("--trace", type=output_file, help="write the simulated timeline for Perfetto / chrome://tracing")
    shown.add_argument("--gantt", type=output_file, help="write the timeline as a PNG")
    shown.add_argument("--dot", type=output_file, help="write the graph coloured by device (Graphviz)")
    shown.set_defaults(run=cmd_show)

    compared = commands.add_parser("compare", help="models x clusters x solvers -> table (md, csv) and chart")
    compared.add_argument("--models", default=",".join(zoo.NAMES), help="comma-separated zoo names or graph files")
    compared.add_argument("--benchmarks", action="store_true", help="add every published benchmark graph (../shared/benchmarks)")
    compared.add_argument("--clusters", type=comma_list(preset_name), default="pcie-4gpu,dgx1-v100",
                          help="comma-separated cluster presets")  # fmt: skip
    compared.add_argument("--solvers", type=comma_list(solver_name), default="single,round-robin,m-topo,m-etf,m-sct,heft,critical-path,auto",
                          help="comma-separated solver names")  # fmt: skip
    compared.add_argument("-b", "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="batch size of the zoo models")
    compared.add_argument("-t", "--time-limit", type=positive_number, default=10.0, help="seconds per solve (time_limit_s)")
    compared.add_argument("--seed", type=int, default=0, help="fixes every random choice of the solvers")
    compared.add_argument("--objectives", default="latency,throughput",
                          help="latency: every solver; throughput: one pipelined plan by auto per graph and cluster")  # fmt: skip
    compared.add_argument("--out-dir", default="results/compare", help="where compare.md, compare.csv and compare.png go")
    compared.add_argument("--readme", help="also put the summary table between the compare markers of this Markdown file")
    compared.set_defaults(run=cmd_compare)

    ran = commands.add_parser("run", help="train a zoo model placed by a plan: one rank per device, via torchrun")
    add_run_arguments(ran)
    ran.set_defaults(run=cmd_run)

    hosted = commands.add_parser("hosts", help="make N network-namespace hosts with shaped links and run one command on each (needs root)")
    add_hosts_arguments(hosted)
    hosted.set_defaults(run=cmd_hosts)

    imported = commands.add_parser("import", help="import a graph file; print it")
    imported.add_argument("file", help="a PipeDream .txt, dnn-partitioning .json or graphc graph .json file")
    imported.add_argument("-o", "--out", type=output_file, help="save the cost graph as graphc JSON")
    imported.set_defaults(run=cmd_import)

    presets = commands.add_parser("presets", help="list the cluster presets (-c NAME)")
    presets.set_defaults(run=cmd_presets)
    solvers = commands.add_parser("solvers", help="list the solvers (-s NAME)")
    solvers.set_defaults(run=cmd_solvers)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """How a model is built and traced: batch, zoo size, granularity (``trace``, ``plan``, ``calibrate``)."""
    parser.add_argument("-b", "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="batch size of the example inputs")
    parser.add_argument("--size", choices=zoo.SIZES, default="full", help="zoo configuration")
    parser.add_argument("--granularity", choices=("op", "module"), default="module",
                        help="one graph node per ATen op, or per leaf module")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's mistake exits with status 2 and one line on stderr (argparse for a bad
    option value, :class:`GraphcError` for the rest)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except GraphcError as exc:
        print(f"graphc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
