"""The errors graphc raises on bad input: each says what was wrong and how to fix it.

The placement errors that the shared data (profiled times) raises live here too, so that the
intermediate representation needs nothing above it; :mod:`placement.errors` re-exports them."""

from __future__ import annotations


class GraphcError(Exception):
    """Base of every error graphc raises on purpose."""


class TraceError(GraphcError):
    """A model could not be traced; the message names the model's source line and the reason."""


class GraphFormatError(GraphcError):
    """A graph file (graphc JSON or an imported benchmark format) is malformed; names file and field."""


class MissingFileError(GraphcError, FileNotFoundError):
    """A file or folder graphc needs does not exist; the message says how to point graphc at it."""


class PlacementError(GraphcError):
    """A placement input is unusable: an unknown device, an unassigned node, an impossible order."""


class ProfileFormatError(PlacementError):
    """A cache file of profiled op times is malformed; names the file and the field."""
