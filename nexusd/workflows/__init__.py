"""Workflow runs, dispatched to workers and recorded in their session."""

from ._engine import RunPolicy as RunPolicy
from ._engine import Workflows as Workflows

__all__ = ["RunPolicy", "Workflows"]
