"""Starting ranks on one machine from Python: :func:`spawn`.

:func:`spawn` runs a function on ``n`` local ranks, each a fresh Python process (``python -m
runtime.rank``) with the environment torchrun would give it (the rendezvous store lives in the calling
process, as torchrun's agent holds it), and returns what every rank returned or raised. Tests,
benchmarks and notebooks use it; ``graphc run`` (:mod:`graphc.app.run`) starts ranks through torchrun.
torchrun itself is not used here because it tears every rank down the moment one fails, while the
survivors of a fault must get a grace period to report what they saw, and because it does not hand
back each rank's exit status.

Nothing crosses between the processes as pickled objects (graphc never unpickles): the function goes by
its importable name (``module:qualname``), and the arguments and results are *plain values*: None,
bools, numbers, strings, tensors, and lists, tuples and dicts of them (numpy's scalars become Python
numbers, as in JSON), written as JSON with the tensors' raw bytes (:mod:`runtime.plainfile`), which
refuses anything else. A rank therefore builds what
it runs (a model, its partition) from a description: a zoo name, a plan as JSON. An exception comes back
as its class name, message, attributes and traceback text; graphc's own errors
(:mod:`graphc.ir.errors`) are rebuilt as their class, any other as
:class:`~graphc.ir.errors.RunFailed` carrying the text.

Ranks end with the process that started them (Linux ``PR_SET_PDEATHSIG``, see :mod:`runtime.rank`).
As torchrun does, once a rank fails the others get a grace period and are then killed.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from graphc.ir import errors as graphc_errors
from graphc.ir.errors import ConfigurationError, GraphcError, RunFailed
from runtime import plainfile

PARENT_ENV = "GRAPHC_SPAWN_PARENT"
"""The process id of the process that called :func:`spawn`, in every rank's environment."""

_SCRIPT_PREFIX = "file:"
_PLAIN_SCALARS = (type(None), bool, int, float, str)


@dataclass
class RankOutcome:
    """How one rank of :func:`spawn` ended.

    Attributes:
        rank: the rank.
        result: what the function returned (None if it raised or was killed): a plain value.
        error: the exception it raised, rebuilt in this process (graphc's own classes as themselves, any
            other as :class:`~graphc.ir.errors.RunFailed`); a :class:`~graphc.ir.errors.RunFailed` saying
            so when it was killed or exited without reporting; None when it returned.
        traceback: the rank's traceback text of ``error``; empty when it raised nothing.
        exitcode: the process's exit status (``-signal`` when a signal ended it); None when :func:`spawn`
            killed it after the grace period or the timeout.
    """

    rank: int
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.exitcode == 0


def spawn(
    fn: Callable[..., Any] | str,
    world_size: int,
    args: tuple = (),
    *,
    timeout_s: float = 300.0,
    grace_s: float = 10.0,
    threads: int = 1,
) -> list[RankOutcome]:
    """Run ``fn(*args)`` on ranks ``0 .. world_size - 1`` of this machine; return every rank's outcome.

    ``fn`` is a module-level function, or its name ``"module:qualname"``; it calls
    :func:`runtime.distributed.init_from_env` itself, exactly as under torchrun. ``args`` must be plain
    values (module docstring): describe a model or a partition (a zoo name and its options, a plan's
    ``to_dict()``) and build it in ``fn``. Each rank runs with ``threads`` intra-op threads. A rank still
    running ``timeout_s`` after the start, or ``grace_s`` after another rank failed, is killed.

    Raises :class:`~graphc.ir.errors.ConfigurationError` for a function that cannot be imported by name
    (a lambda, a nested function) or arguments that are not plain values, before any rank starts.
    """
    name = function_name(fn)
    args = plain(tuple(args), "args")
    with tempfile.TemporaryDirectory(prefix="graphc-spawn-") as scratch:
        save_plain({"function": name, "args": list(args), "threads": threads}, Path(scratch) / "call.pt", "the call")
        return _run_ranks(Path(scratch), world_size, timeout_s, grace_s)


def end_rank(status: int) -> NoReturn:
    """End this rank's process now with ``status``, after flushing stdout and stderr.

    For a rank that has destroyed its process group and written what it had to: ``os._exit`` skips the
    interpreter's and the C++ libraries' teardown, where gloo's threads now and then abort the process
    after a run that went well ("terminate called without an active exception", no Python frame; about
    one run in five of the averaging strategies' tests), which would report a finished rank as crashed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# -- functions by name -----------------------------------------------------------------------------


def function_name(fn: Callable[..., Any] | str) -> str:
    """``fn``'s importable name ``"module:qualname"`` (``"file:/path/script.py:qualname"`` for a function
    of the script being run); refuses, saying how to fix it, a function another process cannot import."""
    if isinstance(fn, str):
        name = fn
    else:
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
        if module is None or qualname is None:
            raise ConfigurationError(f"spawn: {fn!r} has no importable name; pass a function defined at the top level of a module")
        if "<lambda>" in qualname or "<locals>" in qualname:
            raise ConfigurationError(
                f"spawn: {module}.{qualname} is a lambda or a nested function, which another process cannot import by name; "
                "define it at the top level of a module and pass what it closes over in args"
            )
        if module == "__main__":
            script = getattr(sys.modules["__main__"], "__file__", None)
            if script is None:
                raise ConfigurationError(
                    f"spawn: {qualname} is defined in an interactive session, which another process cannot import; "
                    "define it in a module (a .py file) and import it from there"
                )
            module = _SCRIPT_PREFIX + str(Path(script).resolve())
        name = f"{module}:{qualname}"
    found = resolve_function(name)
    if not isinstance(fn, str) and found is not fn:
        raise ConfigurationError(f"spawn: the name {name!r} finds {found!r}, not {fn!r}; pass a function defined at the top level of a module")
    return name


def resolve_function(name: str) -> Callable[..., Any]:
    """The function named ``"module:qualname"`` (or ``"file:/path/script.py:qualname"``), imported."""
    module_name, sep, qualname = name.rpartition(":")
    if not sep or not module_name or not qualname:
        raise ConfigurationError(f"spawn: {name!r} is not a function name of the form 'module:qualname'")
    try:
        found: Any = _import_script(module_name.removeprefix(_SCRIPT_PREFIX)) if module_name.startswith(_SCRIPT_PREFIX) else importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"spawn: cannot import {name!r} ({exc}); pass a function defined at the top level of a module") from exc
    if not callable(found):
        raise ConfigurationError(f"spawn: {name!r} is {type(found).__name__}, not a function")
    return found


def _import_script(path: str) -> Any:
    """The script ``path`` imported as a module that is not ``__main__`` (its ``if __name__ ==
    "__main__"`` block does not run), once per process."""
    module_name = "__graphc_script__"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == path:
        return sys.modules[module_name]
    if getattr(sys.modules.get("__main__"), "__file__", None) and str(Path(sys.modules["__main__"].__file__).resolve()) == path:
        return sys.modules["__main__"]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no Python script at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# -- plain values ----------------------------------------------------------------------------------


def plain(value: Any, where: str) -> Any:
    """``value`` as a plain value (module docstring): numpy's scalars and subclasses of bool, int, float,
    str, list, tuple and dict (``torch.Size``, named tuples, ``OrderedDict``) become the base type, as
    JSON would write them; refuses anything else, naming where it sits and how to fix it."""
    if value is None or type(value) in (bool, int, float, str) or type(value) in (torch.Tensor, torch.nn.Parameter):
        return value
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():  # numpy's scalars
        return plain(value.item(), where)
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, list | tuple):
        items = [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {plain(key, f"{where} key {key!r}"): plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise ConfigurationError(
        f"spawn: {where} is a {type(value).__module__}.{type(value).__qualname__}; ranks take and return only None, bools, "
        "numbers, strings, tensors and lists, tuples and dicts of them: pass a description (a zoo name, a plan's to_dict()) "
        "and build the object on the rank"
    )


def save_plain(value: Any, path: Path, where: str) -> None:
    """Write ``value`` (:func:`plain`; ``where`` names it in an error) to ``path``
    (:func:`runtime.plainfile.save_plain`: JSON and raw tensor bytes, no pickle)."""
    plainfile.save_plain(plain(value, where), path)


def load_plain(path: Path) -> Any:
    """The plain value in ``path`` (:func:`runtime.plainfile.load_plain`, which builds nothing but
    tensors and plain containers)."""
    return plainfile.load_plain(path)


# -- errors by name --------------------------------------------------------------------------------


def error_doc(error: BaseException) -> dict[str, Any]:
    """``error`` as JSON: its class, message, JSON-able attributes and traceback text."""
    attributes = {}
    for key, value in vars(error).items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        attributes[key] = value
    return {
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "class": type(error).__name__,
        "message": str(error),
        "attributes": attributes,
        "traceback": "".join(traceback.format_exception(error)),
    }


def error_from_doc(doc: dict[str, Any]) -> BaseException:
    """The error :func:`error_doc` wrote: a class of :mod:`graphc.ir.errors` as itself (its attributes
    restored), anything else as :class:`~graphc.ir.errors.RunFailed` whose message says the type and
    gives the message and the rank's traceback."""
    cls = getattr(graphc_errors, doc["class"], None)
    if isinstance(cls, type) and issubclass(cls, GraphcError) and doc["type"] == f"{cls.__module__}.{cls.__qualname__}":
        error = cls.__new__(cls)
        Exception.__init__(error, doc["message"])
        vars(error).update(doc["attributes"])
        return error
    return RunFailed(f"{doc['type']}: {doc['message']}\n\n{doc['traceback']}", type_name=doc["type"], detail=doc["message"])


# -- the ranks -------------------------------------------------------------------------------------


def _run_ranks(scratch: Path, world_size: int, timeout_s: float, grace_s: float) -> list[RankOutcome]:
    """:func:`spawn` with the call written to ``scratch/call.pt``; each rank writes its result or error there."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=timeout_s))
    base = dict(
        os.environ,
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(store.port),
        TORCHELASTIC_USE_AGENT_STORE="True",
        PYTHONPATH=os.pathsep.join(str(Path(p).resolve()) for p in sys.path),  # what this process imports from
        **{PARENT_ENV: str(os.getpid())},
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "runtime.rank", str(scratch)], env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        )
        for rank in range(world_size)
    ]
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            if any(p.returncode not in (None, 0) for p in processes):
                deadline = min(deadline, time.monotonic() + grace_s)
            time.sleep(0.05)
    finally:
        killed = [p.poll() is None for p in processes]
        for p, kill in zip(processes, killed):
            if kill:
                p.kill()
        for p in processes:
            p.wait()
    return [_outcome(scratch, rank, None if kill else p.returncode) for rank, (p, kill) in enumerate(zip(processes, killed))]


def _outcome(scratch: Path, rank: int, exitcode: int | None) -> RankOutcome:
    """What rank ``rank`` left in ``scratch`` and how it ended."""
    outcome = RankOutcome(rank, exitcode=exitcode)
    error, result = scratch / f"error-{rank}.json", scratch / f"result-{rank}.pt"
    if error.exists():
        doc = json.loads(error.read_text())
        outcome.error, outcome.traceback = error_from_doc(doc), doc["traceback"]
    elif result.exists():
        outcome.result = load_plain(result)
    elif exitcode is None:
        outcome.error = RunFailed(f"rank {rank} was killed by spawn: still running after the timeout or another rank's failure")
    else:
        outcome.error = RunFailed(f"rank {rank} exited with status {exitcode} before reporting (see its stderr)")
    return outcome
