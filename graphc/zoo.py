"""``graphc.zoo``, the public name of the benchmark network zoo (:mod:`graphc.frontend.zoo`)."""

from graphc.frontend.zoo import *  # noqa: F403
from graphc.frontend.zoo import __all__  # noqa: F401
