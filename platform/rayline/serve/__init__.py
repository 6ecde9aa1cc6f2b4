"""Ray Serve: the replica (replica.py), the app builder (app.py), deploying and switching versions (control.py),
request schema (schema.py), ingress (ingress.py), the forward pass's runtime (runtime.py: torch or ONNX Runtime),
the gRPC methods (grpc_api.py, rayline.proto).

Every name is imported on first use: Serve's controller imports rayline.serve.ingress as it starts, and
`rayline.serve.schema` stays free of Ray.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "MAX_ROWS": "schema",
    "RequestError": "schema",
    "RequestSchema": "schema",
    "ModelServer": "replica",
    "build": "app",
    "build_app": "app",
    "deploy": "control",
    "endpoint_url": "control",
    "grpc_endpoint": "control",
    "promote": "control",
    "rollback": "control",
    "shutdown": "control",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"rayline.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
