"""The one error a run stops with when it cannot start or continue (the CLI prints its message)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot start or continue: diverged loss, nothing to resume, an occupied folder."""
