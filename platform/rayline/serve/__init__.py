"""Ray Serve: the model deployment (app.py) and its request schema (schema.py).

The app names are imported on first use, so `rayline.serve.schema` stays free of Ray.
"""

from __future__ import annotations

from typing import Any

from rayline.serve.schema import MAX_ROWS, RequestError, RequestSchema

_APP_NAMES = ("ModelServer", "build", "build_app", "deploy", "endpoint_url", "shutdown")

__all__ = ["MAX_ROWS", "RequestError", "RequestSchema", *_APP_NAMES]


def __getattr__(name: str) -> Any:
    if name in _APP_NAMES:
        from rayline.serve import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
