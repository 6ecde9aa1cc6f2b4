"""Ray Serve: the replica (replica.py), the app builder (app.py), deploying and switching versions (control.py),
request schema.

The Ray-dependent names are imported on first use, so `rayline.serve.schema` stays free of Ray.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from rayline.serve.schema import MAX_ROWS, RequestError, RequestSchema

_LAZY = {
    "ModelServer": "replica",
    "build": "app",
    "build_app": "app",
    "deploy": "control",
    "endpoint_url": "control",
    "promote": "control",
    "rollback": "control",
    "shutdown": "control",
}

__all__ = ["MAX_ROWS", "RequestError", "RequestSchema", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"rayline.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
