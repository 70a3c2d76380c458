"""Importers of published benchmark graphs, so graphc's solvers run on the graphs of published baselines.

- :func:`load_pipedream`: PipeDream layer profiles (``pipedream/*.txt``).
- :func:`load_dnn_partitioning`: NeurIPS 2020 device-placement inputs (``dnn-partitioning/*/*.json``),
  and :func:`load_expert_split` for their human-expert splits (``dnn-partitioning/experts/*.json``).
- :func:`load_benchmark`: any graph file graphc reads, chosen by the file's suffix and content: either of
  the above, or graphc's own cost-graph JSON (``graphc trace -o``, :meth:`graphc.ir.graph.Graph.save`).
- :func:`shared_benchmarks_dir`: where the published files live; :func:`benchmark_files` lists them.

Every importer raises :class:`graphc.ir.errors.GraphFormatError` on a malformed file, naming the file and
the line or the JSON field.
"""

from __future__ import annotations

import os
from pathlib import Path

from graphc.ir.errors import GraphFormatError, MissingFileError
from graphc.ir.graph import Graph
from graphc.ir.importers.dnn_partitioning import load_dnn_partitioning
from graphc.ir.importers.dnn_partitioning import load_expert_split as _read_expert_split
from graphc.ir.importers.pipedream import load_pipedream
from graphc.ir.jsonfile import read_json

ENV_VAR = "GRAPHC_BENCHMARKS"

__all__ = [
    "ENV_VAR",
    "benchmark_files",
    "load_benchmark",
    "load_dnn_partitioning",
    "load_expert_split",
    "load_pipedream",
    "shared_benchmarks_dir",
]


def shared_benchmarks_dir() -> Path:
    """The folder of published benchmark graphs.

    ``$GRAPHC_BENCHMARKS`` when set, else ``shared/benchmarks`` next to the repository root (where a
    source checkout keeps it: ``<root>/../shared/benchmarks``).

    Raises:
        MissingFileError: the folder does not exist; the message says how to point graphc at it.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        folder, origin = Path(configured).expanduser(), f"${ENV_VAR}"
    else:
        folder, origin = Path(__file__).resolve().parents[4] / "shared" / "benchmarks", "the default"
    if not folder.is_dir():
        raise MissingFileError(
            f"benchmark folder {folder} ({origin}) does not exist; set {ENV_VAR} to the folder holding "
            "pipedream/ and dnn-partitioning/"
        )
    return folder


def load_benchmark(path: str | Path, *, device_label: str = "V100") -> Graph:
    """Read a graph file: ``.txt`` PipeDream; ``.json`` graphc's own cost graph (a JSON object with a
    ``schema`` field, as :meth:`Graph.save` and ``graphc trace -o`` write it), else dnn-partitioning.

    A relative ``path`` that does not exist from the working directory is looked up under
    :func:`shared_benchmarks_dir`, so ``load_benchmark("pipedream/vgg16.txt")`` works anywhere.
    ``device_label`` is the device a PipeDream profile was measured on (unused for JSON inputs).

    Raises:
        GraphFormatError: the suffix is neither ``.txt`` nor ``.json``, or the file is missing or
            malformed (a graphc JSON file of another schema, such as a plan, included).
    """
    path = _resolve(Path(path))
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return load_pipedream(path, device_label)
    if suffix == ".json":
        doc = read_json(path, GraphFormatError, "graph")
        if isinstance(doc, dict) and "schema" in doc:  # graphc's own files say what they are
            return Graph.from_dict(doc, str(path))
        return load_dnn_partitioning(path)
    raise GraphFormatError(
        f"{path}: unknown graph format {suffix!r}: expected .txt (PipeDream) or .json (graphc or dnn-partitioning)"
    )


def load_expert_split(path: str | Path, graph: Graph) -> dict[str, str]:
    """A human-expert split of a dnn-partitioning graph: node name -> device label
    (:func:`graphc.ir.importers.dnn_partitioning.load_expert_split`); a relative ``path`` is looked up as
    :func:`load_benchmark` does, so ``load_expert_split("dnn-partitioning/experts/bert24_inference_expert.json",
    graph)`` works anywhere."""
    return _read_expert_split(_resolve(Path(path)), graph)


def _resolve(path: Path) -> Path:
    if path.is_absolute() or path.exists():
        return path
    try:
        shared = shared_benchmarks_dir() / path
    except MissingFileError:
        return path
    return shared if shared.exists() else path


def benchmark_files(*, throughput: bool = True) -> list[str]:
    """Every published graph file, relative to :func:`shared_benchmarks_dir`: the PipeDream profiles, the
    dnn-partitioning latency inputs and (``throughput=True``) its throughput inputs. Expert splits and
    licence files are not graphs and are left out."""
    root = shared_benchmarks_dir()
    files = sorted(p.relative_to(root).as_posix() for p in (root / "pipedream").glob("*.txt") if p.stem != "LICENSE")
    for sub in ("latency", "throughput") if throughput else ("latency",):
        files += sorted(p.relative_to(root).as_posix() for p in (root / "dnn-partitioning" / sub).glob("*.json"))
    return files
