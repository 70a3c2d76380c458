"""The errors the placement package raises on purpose; each names what was wrong and where."""

from __future__ import annotations

from graphc.errors import GraphcError


class PlacementError(GraphcError):
    """A placement input is unusable: an unknown device, an unassigned node, an impossible order."""


class ClusterFormatError(PlacementError):
    """A cluster description (JSON or constructor arguments) is malformed; names the bad field."""


class ProfileFormatError(PlacementError):
    """A cache file of profiled op times is malformed; names the file and the field."""
