"""The errors the placement package raises on purpose; each names what was wrong and where."""

from __future__ import annotations

from graphc.ir.errors import PlacementError, ProfileFormatError

__all__ = ["ClusterFormatError", "PlacementError", "ProfileFormatError"]


class ClusterFormatError(PlacementError):
    """A cluster description (JSON or constructor arguments) is malformed; names the bad field."""
