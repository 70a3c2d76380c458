"""Calibration of the ``local`` cluster, in one place: :func:`calibrate`.

The ``local`` preset's CPU figures (peak FLOP/s, memory bandwidth, the link between workers) are
assumptions (:func:`placement.presets.local`); a prediction made with them can be several times off.
Calibrating replaces them with measurements of this machine:

1. every cost node of the traced program profiled on one CPU thread, as a ``local`` worker runs it
   (:func:`graphc.frontend.profile.profile_program`), at the full batch and, traced again, at a quarter
   of it (:data:`PROFILE_SPLIT`: the example inputs split as the runtime splits microbatches,
   :func:`runtime.step.split_batch`; a half, or nothing, when the batch does not split so), which fits
   each node's fixed cost per microbatch (:func:`graphc.ir.profiled.with_fixed_costs`), and at a half
   and an eighth (:data:`PROFILE_SPLITS`), so that the microbatches plans use are priced as measured
   (split times, :func:`graphc.ir.profiled.with_split_times`);
2. one factor that scales that table so that the whole graph on one worker simulates to the measured
   eager training step (:func:`placement.calibration.calibration_factor`: ops timed in isolation miss
   what runs between them: the loss, the framework);
3. the link between two ranks as the runtime meets it (:func:`runtime.link.measure_link`), and a
   worker's memory bandwidth as a gradient bucket meets it (:func:`runtime.collectives.copy_bandwidth`
   over the model's parameters: the copies into one flat buffer and back that the simulator charges a
   CPU worker per bucket);
4. when the caller says how another process rebuilds the model (``rebuild``: a zoo network's name and
   :func:`graphc.frontend.zoo.build` arguments), how much slower each of ``k`` workers computes its
   training step when ``k`` compute at once, ``s(k)`` for ``k = 2 ..`` the workers (at most the usable
   cores) (:func:`runtime.corun.measure_corun`, a few steps per rank): the cost model's
   ``corun_slowdown``. Without ``rebuild`` (a model that lives only in this process) it is not measured
   and ``s = 1``, as before.

Measuring takes seconds to minutes, so both results are cached on disk as JSON in
:func:`cache_folder` (``$GRAPHC_CACHE``, else ``$XDG_CACHE_HOME/graphc`` or ``~/.cache/graphc``):

* ``link-<hash>.json`` (schema ``graphc.link``): the link, keyed by the machine alone
  (:class:`Machine`: CPU model, cores, operating system and architecture);
* ``calibration-<name>-<hash>.json`` (schema ``graphc.calibration``): the profiled table (in
  :class:`graphc.ir.profiled.ProfiledTimes`' own JSON format), the factor, the eager step and the memory
  bandwidth, keyed by
  what makes them valid (:func:`calibration_key`): the graph's fingerprint, the shapes and dtypes of
  the example inputs, the torch version, the worker's thread count and the machine; and the co-run
  slowdown, measured later into the same file when a call with ``rebuild`` finds it missing.

A later call with the same key loads the file and says so; ``refresh=True`` measures again (and
rewrites both files). A file that cannot be read, or was written for another key, is measured again.

Other load. Measurements taken while other processes run are worth little on a small machine (eager
steps several times too slow, a link several times too slow), so each measurement records the cores
other processes used meanwhile (:class:`graphc.app.measure_plans.OtherLoad`, from ``/proc/stat``); above
:data:`BUSY_CORES` the result is used for this call but not cached, and one console line says so and
how to measure again. The co-run slowdown, which other load inflates most (two ranks on two cores leave
none spare), has its own window and a lower bound, :data:`CORUN_BUSY_CORES`: above it, it is neither
used nor cached (``s = 1`` for this call).
The ``graphc calibrate`` command, ``graphc plan -c local --calibrate``, ``graphc.compile(...,
calibrate=True)`` and ``graphc demo`` all call :func:`calibrate`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from rich.console import Console

from graphc.app.measure_plans import OtherLoad
from graphc.frontend import zoo
from graphc.frontend.profile import ProfileSettings, profile_program
from graphc.frontend.tracing import TracedProgram, trace
from graphc.ir.errors import ConfigurationError, FormatError, MismatchError, TraceError
from graphc.ir.jsonfile import check_header, read_json, write_json
from graphc.ir.profiled import ProfiledTimes, with_fixed_costs, with_split_times
from placement.calibration import calibration_factor
from placement.cluster import Cluster
from placement.cost_model import CostModel, checked_corun_slowdown
from runtime.collectives import copy_bandwidth
from runtime.corun import measure_corun, median_step_ms, usable_cores
from runtime.launch import function_name
from runtime.link import LinkSpeed, local_cluster, measure_link
from runtime.step import split_batch

CALIBRATION_SCHEMA = "graphc.calibration"
LINK_SCHEMA = "graphc.link"
CACHE_VERSION = 3  # 3: the memory bandwidth
#: The batch is also profiled split in this many microbatches (else in 2) to fit the fixed costs.
PROFILE_SPLIT = 4
#: ... and in each of these, where it splits so, for the split times of the microbatches plans use.
PROFILE_SPLITS = (2, 4, 8)
#: Cores other processes may use, on average, while a measurement is taken and still be cached.
BUSY_CORES = 0.3
#: The same for the co-run slowdown, which other load inflates most (:func:`_with_corun`).
CORUN_BUSY_CORES = 0.1
#: Runs per node when profiling, and timed eager steps (after two warm-up steps).
PROFILE_REPEATS = 3
EAGER_STEPS = 5


@dataclass(frozen=True)
class Machine:
    """What a measurement on this machine depends on, and the link's cache key."""

    cpu: str
    cores: int
    system: str

    @classmethod
    def this(cls) -> Machine:
        """This machine: the CPU model from ``/proc/cpuinfo`` (else :func:`platform.processor`), the
        cores, the operating system and architecture."""
        cpu = ""
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
        except OSError:
            pass
        return cls(cpu or platform.processor() or platform.machine(), os.cpu_count() or 1, f"{platform.system()} {platform.machine()}")


@dataclass
class Calibration:
    """The ``local`` cluster calibrated on this machine for one program (module docstring).

    Attributes:
        profiled: every node's forward and backward times on one CPU thread, as measured.
        factor: the scale that makes one worker predict the eager step (:attr:`scaled` applies it).
        eager_ms: the measured eager training step on one thread, in ms.
        memory_bandwidth: a worker's memory bandwidth as the model's gradient buckets meet it, bytes read
            and written per second; None for a model without parameters (the preset's assumption stays).
        link: the link measured between two ranks.
        key: what the calibration is valid for (:func:`calibration_key`).
        machine: where it was measured.
        measured_at: when the profile was measured (ISO 8601, UTC).
        path: the cache file it was written to or read from.
        loaded: True when read from the cache rather than measured by this call.
        cached: False when measured under other load and so not written to the cache (module docstring).
        corun_slowdown: ``{k: s(k)}``, how much slower each of ``k`` workers computing at once runs than
            one alone; empty when not measured (module docstring, 4).
        workers: the CPU workers of :attr:`cluster`.
        cluster: the ``local`` preset with ``workers`` workers joined by :attr:`link`, each with the
            measured :attr:`memory_bandwidth`, to plan on.
        cost_model: :attr:`cluster` with the :attr:`scaled` table, to plan with.
    """

    profiled: ProfiledTimes
    factor: float
    eager_ms: float
    memory_bandwidth: float | None
    link: LinkSpeed
    key: dict[str, Any]
    machine: Machine
    measured_at: str
    path: Path
    loaded: bool
    workers: int = 2
    cached: bool = True
    corun_slowdown: dict[int, float] = field(default_factory=dict)
    cluster: Cluster = field(init=False, repr=False)
    cost_model: CostModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cluster = local_cluster(self.workers, self.link, self.memory_bandwidth)
        self.cost_model = self.cost_model_with(self.scaled)

    def cost_model_with(self, table: ProfiledTimes, *, corun: bool = True) -> CostModel:
        """The cost model of :attr:`cluster` with ``table`` for its times, the link's CPU cost per message
        and, with ``corun``, the co-run slowdown (:attr:`cost_model` is it with :attr:`scaled`)."""
        return CostModel(self.cluster, profiled=table, endpoint_cpu_s=self.link.endpoint_cpu_s,
                         endpoint_cpu_per_byte_s=self.link.endpoint_cpu_per_byte_s,
                         corun_slowdown=self.corun_slowdown if corun else {})  # fmt: skip

    @property
    def scaled(self) -> ProfiledTimes:
        """The profiled times times :attr:`factor`: what the cost model reads."""
        return self.profiled.scaled(self.factor)

    def describe(self) -> list[str]:
        """What was measured, one line each (what ``graphc calibrate`` prints)."""
        how = f"loaded from {self.path} (measured {self.measured_at})" if self.loaded else f"measured, cached in {self.path}"
        if not self.cached:
            how = "measured under other load, not cached"
        return [
            f"calibration {how}",
            f"eager step {self.eager_ms:.1f} ms on one thread: profiled times x {self.factor:.3f}, so that one worker predicts it",
            self._describe_memory(),
            (f"link between two ranks: {1e6 * self.link.latency_s:.0f} us per message, {self.link.bandwidth / 1e9:.2f} GB/s; "
             f"each end's CPU {1e6 * self.link.endpoint_cpu_s:.0f} us + {1e12 * self.link.endpoint_cpu_per_byte_s:.2f} us/MB per message"),
            self._describe_corun(),
        ]

    def _describe_memory(self) -> str:
        if self.memory_bandwidth is None:
            return "memory bandwidth not measured (no parameters): the preset's assumption"
        return f"memory bandwidth {self.memory_bandwidth / 1e9:.1f} GB/s (read + write), copying the gradients into a bucket and back"

    def _describe_corun(self) -> str:
        if not self.corun_slowdown:
            return "co-run slowdown not measured (calibrate(rebuild=...) measures it): workers computing at once are priced as alone"
        each = ", ".join(f"{k} at once x {s:.3f}" for k, s in sorted(self.corun_slowdown.items()))
        return f"workers computing at once each take longer than one alone: {each}"


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Where calibrations are cached: ``cache_dir`` when given, else ``$GRAPHC_CACHE``, else
    ``$XDG_CACHE_HOME/graphc``, else ``~/.cache/graphc``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("GRAPHC_CACHE"):
        return Path(os.environ["GRAPHC_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "graphc"


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def input_signature(example_inputs: tuple, example_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """The shapes and dtypes of the tensors among the inputs (and the repr of other values), in order."""
    leaves = pytree.tree_leaves((example_inputs, example_kwargs or {}))
    return [[list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else repr(x) for x in leaves]


def calibration_key(
    program: TracedProgram, example_inputs: tuple, example_kwargs: dict[str, Any] | None, threads: int, machine: Machine
) -> dict[str, Any]:
    """What a calibration is valid for: the graph's fingerprint, the input shapes, the torch version,
    the worker's threads and the machine; another value of any of them measures again."""
    return {
        "graph": program.graph.fingerprint(),
        "inputs": input_signature(example_inputs, example_kwargs),
        "torch": torch.__version__,
        "threads": threads,
        "machine": asdict(machine),
        "profile_split": PROFILE_SPLIT,
        "profile_splits": list(PROFILE_SPLITS),
    }


def eager_step_ms(
    model: torch.nn.Module | Callable,
    example_inputs: tuple,
    *,
    loss: Callable[[Any], torch.Tensor] | None = None,
    example_kwargs: dict[str, Any] | None = None,
    steps: int = EAGER_STEPS,
    threads: int = 1,
) -> float:
    """The median wall time of an eager forward and backward of ``model`` (a module or a function of
    modules and tensors) on the inputs, in ms, with ``threads`` intra-op threads (the caller's setting is
    restored). The backward is of ``loss(output)``, else of the output when it is a scalar, else of the
    sum of its tensors. Gradients accumulate on ``model``'s parameters: pass a copy to keep them."""
    step = training_step(model, example_inputs, loss=loss, example_kwargs=example_kwargs)
    with intra_op_threads(threads):
        return median_step_ms(step, 2, steps)


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, as a worker does; the caller's setting is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def training_step(
    model: torch.nn.Module | Callable,
    example_inputs: tuple,
    *,
    loss: Callable[[Any], torch.Tensor] | None = None,
    example_kwargs: dict[str, Any] | None = None,
) -> Callable[[], torch.Tensor]:
    """A function running one eager training step of ``model`` on the inputs, as :func:`eager_step_ms`
    times it: gradients set to None, forward, backward of ``loss(output)`` (else of the output when it is
    a scalar, else of the sum of its tensors); it returns that scalar, detached."""
    kwargs = example_kwargs or {}
    params = parameters_of(model, example_inputs)

    def step() -> torch.Tensor:
        for p in params:
            p.grad = None
        output = model(*example_inputs, **kwargs)
        value = loss(output) if loss is not None else output
        if not (isinstance(value, torch.Tensor) and value.dim() == 0):
            value = sum(t.sum() for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor) and t.requires_grad)
        value.backward()
        return value.detach()

    return step


def parameters_of(model: torch.nn.Module | Callable, example_inputs: tuple) -> list[torch.nn.Parameter]:
    """The parameters of ``model``, or of the modules among the inputs of a function."""
    roots = [model] if isinstance(model, torch.nn.Module) else [a for a in example_inputs if isinstance(a, torch.nn.Module)]
    return [p for root in roots for p in root.parameters()]


def memory_bandwidth(model: torch.nn.Module | Callable, example_inputs: tuple, threads: int) -> float | None:
    """:func:`runtime.collectives.copy_bandwidth` over the parameters of ``model`` (or of the modules among
    the inputs of a function), on ``threads`` intra-op threads; None when there are none."""
    params = [p for p in parameters_of(model, example_inputs) if p.numel()]
    if not params:
        return None
    with intra_op_threads(threads):
        return copy_bandwidth(params)


def zoo_training_step(name: str, build_kwargs: dict[str, Any]) -> Callable[[], torch.Tensor]:
    """The eager training step (:func:`training_step`, with the network's loss) of the zoo network
    ``name`` built with ``build_kwargs`` (:func:`graphc.frontend.zoo.build`): the factory another
    process runs to measure the co-run slowdown (:func:`runtime.corun.measure_corun`)."""
    zm = zoo.build(name, **build_kwargs)
    return training_step(zm.model, zm.example_inputs, loss=zm.loss)


def corun_counts(workers: int) -> list[int]:
    """The worker counts whose co-run slowdown is measured: 2 up to ``workers``, at most the usable cores
    (more processes than cores would measure time slicing)."""
    return list(range(2, min(workers, usable_cores()) + 1))


def measured_link(
    *, refresh: bool = False, cache_dir: str | Path | None = None, console: Console | None = None
) -> LinkSpeed:
    """The link between two ranks of this machine (:func:`runtime.link.measure_link`), read from the
    cache keyed by the machine alone, or measured (and cached) when ``refresh`` or not cached."""
    machine = Machine.this()
    path = cache_folder(cache_dir) / f"link-{_digest(asdict(machine))}.json"
    if not refresh:
        try:
            doc = read_json(path, FormatError, "link measurement")
            check_header(doc, LINK_SCHEMA, CACHE_VERSION, str(path), FormatError)
            if doc.get("machine") == asdict(machine):
                return LinkSpeed(float(doc["latency_s"]), float(doc["bandwidth"]),
                                 float(doc["endpoint_cpu_s"]), float(doc["endpoint_cpu_per_byte_s"]))  # fmt: skip
        except (FormatError, KeyError, TypeError, ValueError):
            pass  # not cached, or unreadable: measured again below
    _say(console, "measuring the link between two ranks ...")
    load = OtherLoad()
    load.start()
    link = measure_link()
    if _quiet(load.stop(), "the link", "--recalibrate (graphc calibrate --refresh)", console):
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"schema": LINK_SCHEMA, "version": CACHE_VERSION, "machine": asdict(machine), "measured_at": _now(), **asdict(link)}
        write_json(path, doc)
    return link


def calibrate(
    model: torch.nn.Module | Callable,
    example_inputs: tuple,
    *,
    loss: Callable[[Any], torch.Tensor] | None = None,
    example_kwargs: dict[str, Any] | None = None,
    program: TracedProgram | None = None,
    granularity: str = "module",
    workers: int = 2,
    refresh: bool = False,
    cache_dir: str | Path | None = None,
    console: Console | None = None,
    rebuild: tuple[str, dict[str, Any]] | None = None,
) -> Calibration:
    """Calibrate the ``local`` cluster of ``workers`` CPU workers for ``model`` on ``example_inputs``
    (module docstring): profile, scale to the eager step, measure the link; or load all of it from the
    cache. ``program`` is ``model`` already traced on these inputs (else it is traced here, at
    ``granularity``); ``loss`` turns the output into the scalar the eager step backpropagates (default:
    the output itself when scalar, else the sum of its tensors). ``model`` is left as it was: the eager
    steps run on a copy. ``console``, when given, is told what was measured or loaded. ``rebuild``,
    ``(zoo name, zoo.build keyword arguments)`` that build this same model in another process, has the
    co-run slowdown measured (module docstring, 4) when the cache lacks it."""
    kwargs = example_kwargs or {}
    if program is None:
        program = trace(model, example_inputs, granularity=granularity, example_kwargs=kwargs)
    settings = ProfileSettings(repeats=PROFILE_REPEATS)
    machine = Machine.this()
    key = calibration_key(program, example_inputs, kwargs, settings.threads, machine)
    path = cache_folder(cache_dir) / f"calibration-{program.graph.name}-{_digest(key)}.json"
    link = measured_link(refresh=refresh, cache_dir=cache_dir, console=console)
    found = None if refresh else _load(path, key, link, machine, workers)
    if found is None:
        _say(console, f"profiling {program.graph.name}'s ops on this CPU and timing its eager step ...")
        load = OtherLoad()
        load.start()
        profiled = _profile(model, example_inputs, kwargs, program, settings)
        untouched, inputs, kw = copy.deepcopy((model, example_inputs, kwargs))
        eager_ms = eager_step_ms(untouched, inputs, loss=loss, example_kwargs=kw, threads=settings.threads)
        factor = calibration_factor(profiled, program.graph, Cluster.preset("local"), eager_ms)
        bandwidth = memory_bandwidth(model, example_inputs, settings.threads)
        found = Calibration(profiled, factor, eager_ms, bandwidth, link, key, machine, _now(), path, loaded=False, workers=workers)
        if _quiet(load.stop(), "the calibration", "--recalibrate (graphc calibrate --refresh)", console):
            _save(found)
        else:
            found.cached = False
    missing = [k for k in corun_counts(workers) if k not in found.corun_slowdown]
    if rebuild is not None and missing:
        found = _with_corun(found, rebuild, missing, console)
    for line in found.describe():
        _say(console, line)
    return found


def _profile(
    model: torch.nn.Module | Callable, example_inputs: tuple, kwargs: dict[str, Any], program: TracedProgram, settings: ProfileSettings
) -> ProfiledTimes:
    """``program``'s nodes profiled at the full batch and, traced again, on 1/m of it for each m of
    :data:`PROFILE_SPLITS` the batch splits into (the split times,
    :func:`graphc.ir.profiled.with_split_times`), with the fixed cost per microbatch fitted from 1/:data:`PROFILE_SPLIT` of
    the batch (1/2 when the batch does not split so, or when the model cannot run on so small a batch, as
    batch norm over one value per channel; no fixed costs when neither works: the cost model then uses
    its per-op floor)."""
    profiled = profile_program(program, program.flat_inputs(example_inputs, kwargs), settings)
    smaller: dict[int, tuple[TracedProgram, ProfiledTimes]] = {}
    for parts in PROFILE_SPLITS:
        try:
            small_inputs, small_kwargs = split_batch((example_inputs, kwargs), parts)[0]
            small = trace(model, small_inputs, granularity=program.granularity, example_kwargs=small_kwargs, name=program.graph.name)
        except (MismatchError, TraceError):
            continue
        smaller[parts] = small, profile_program(small, small.flat_inputs(small_inputs, small_kwargs), settings)
    for parts, (small, measured) in smaller.items():
        profiled = with_split_times(profiled, program.graph, measured, small.graph, parts, settings.device_kind)
    fit = next((parts for parts in (PROFILE_SPLIT, 2) if parts in smaller), None)
    if fit is None:
        return profiled
    small, measured = smaller[fit]
    return with_fixed_costs(profiled, program.graph, measured, small.graph, 1 / fit, settings.device_kind)


def _with_corun(found: Calibration, rebuild: tuple[str, dict[str, Any]], counts: list[int], console: Console | None) -> Calibration:
    """``found`` with the co-run slowdown of ``counts`` workers measured for the model ``rebuild``
    describes (:func:`runtime.corun.measure_corun`), written to its cache file when that holds it. Two
    ranks on a two-core machine leave no core spare, so other load inflates the ratio: measured while
    other processes used more than :data:`CORUN_BUSY_CORES`, it is neither used nor cached, and one
    console line says so."""
    name, build_kwargs = rebuild
    _say(console, f"timing {name}'s training step in {', '.join(map(str, counts))} worker processes at once ...")
    load = OtherLoad()
    load.start()
    measured = measure_corun(function_name(zoo_training_step), [name, dict(build_kwargs)], counts)
    other_cores = load.stop()
    if other_cores is not None and other_cores > CORUN_BUSY_CORES:
        _say(console, f"not using the co-run slowdown: other processes used {other_cores:.2f} cores while it was measured "
                      f"(more than {CORUN_BUSY_CORES}); measure it on a quieter machine with a later call")  # fmt: skip
        return found
    found = replace(found, corun_slowdown={**found.corun_slowdown, **measured.slowdown})
    if found.cached:
        _save(found)
    return found


def _save(found: Calibration) -> None:
    """Write ``found`` to its cache file (module docstring)."""
    found.path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": CALIBRATION_SCHEMA, "version": CACHE_VERSION, "key": found.key, "measured_at": found.measured_at,
           "eager_ms": found.eager_ms, "factor": found.factor, "memory_bandwidth": found.memory_bandwidth,
           "profiled": found.profiled.to_dict(),
           "corun_slowdown": {str(k): s for k, s in sorted(found.corun_slowdown.items())}}  # fmt: skip
    write_json(found.path, doc)


def _quiet(other_cores: float | None, what: str, rerun: str, console: Console | None) -> bool:
    """Whether a measurement during which other processes used ``other_cores`` may be cached; when not,
    one console line says so and how to measure again."""
    if other_cores is None or other_cores <= BUSY_CORES:
        return True
    _say(console, f"not caching {what}: other processes used {other_cores:.1f} cores while it was measured "
                  f"(more than {BUSY_CORES}); measure again on a quieter machine with {rerun}")  # fmt: skip
    return False


def _load(path: Path, key: dict[str, Any], link: LinkSpeed, machine: Machine, workers: int) -> Calibration | None:
    """The calibration cached at ``path`` when it was made for ``key``; None when there is none, it is
    unreadable, or it was made for another key (then it is measured again and overwritten)."""
    if not path.is_file():
        return None
    try:
        doc = read_json(path, FormatError, "calibration")
        check_header(doc, CALIBRATION_SCHEMA, CACHE_VERSION, str(path), FormatError)
        if doc.get("key") != json.loads(json.dumps(key)):
            return None
        profiled = ProfiledTimes.from_dict(doc["profiled"], f"{path}: profiled")
        corun = checked_corun_slowdown(doc.get("corun_slowdown", {}))
        bandwidth = doc["memory_bandwidth"]
        if bandwidth is not None and not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
            return None  # not a bandwidth: measured again
        return Calibration(profiled, float(doc["factor"]), float(doc["eager_ms"]), bandwidth, link, key, machine,
                           str(doc["measured_at"]), path, loaded=True, workers=workers, corun_slowdown=corun)  # fmt: skip
    except (FormatError, ConfigurationError, KeyError, TypeError, ValueError):
        return None


def _say(console: Console | None, line: str) -> None:
    """Print ``line`` on ``console``, when there is one (a live status line of the caller stays)."""
    if console is not None:
        console.print(line)
