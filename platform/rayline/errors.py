"""The one base class of every error a user can fix. Standard library only; imported by every layer."""

from __future__ import annotations


class RaylineError(Exception):
    """A problem the user caused and can fix: the CLI prints its message on one line and exits with 2.

    Subclasses keep the built-in base they had (ValueError, RuntimeError), so callers that caught
    those still do.
    """
