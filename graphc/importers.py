"""``graphc.importers``, the public name of the benchmark-graph readers (:mod:`graphc.ir.importers`)."""

from graphc.ir.importers import *  # noqa: F403
from graphc.ir.importers import __all__  # noqa: F401
