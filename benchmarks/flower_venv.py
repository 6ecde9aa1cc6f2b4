"""Flower's own virtualenv (benchmarks/.flower-venv): flwr[simulation] pins its own Ray (1.42.0: ray==2.55.1),
which cannot live beside rayline's Ray 2.60, so the Flower side of benchmarks/federated_bench.py runs from here.

Made once with `python -m venv` and pip, then reused while it holds the pinned packages. torch must be the CPU
build from the same range as rayline's (`torch>=2.6,<2.14`): as in peer_venv.py, pip is asked first what it
would install, and when that is a CUDA build (PyPI's Linux wheels are) the venv instead sees rayline's own
torch through a .pth file placed last on its path. Flower's Ray, numpy, pydantic and pyarrow are installed in
the venv itself, so they come first; the rayline checkout is put on PYTHONPATH only to build the same model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peer_venv import already_made, installed, pip, pulls_cuda_torch, share_torch

VENV = Path(__file__).resolve().parent / ".flower-venv"
FLOWER = "flwr[simulation]==1.42.0"
# pydantic, pyyaml, pyarrow: `rayline.models.build_model` (imported from the checkout) needs rayline.config.
PACKAGES = [FLOWER, "numpy", "pydantic>=2", "pyyaml", "pyarrow>=14"]
TORCH = "torch>=2.6,<2.14"
STAMP = "rayline-flower-venv.json"
REPORTED = ["flwr", "ray", "torch", "numpy", "grpcio", "protobuf"]


def ensure() -> dict:
    """The venv's python and package versions, making or mending the venv if needed (a minute or two)."""
    python = VENV / "bin" / "python"
    stamp = VENV / STAMP
    wanted = {"packages": PACKAGES, "torch": TORCH}
    if (made := already_made(VENV, STAMP, wanted)) is not None:
        return made
    print(f"making Flower's virtualenv {VENV} ({FLOWER}, {TORCH}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip(python, "install", "--quiet", "--upgrade", "pip")
    cuda_torch = pulls_cuda_torch(python, VENV, [TORCH])
    pip(python, "install", "--quiet", *PACKAGES)  # before any .pth: Flower's packages all land in the venv
    torch_source = "own CPU wheel"
    if cuda_torch:
        share_torch(python)
        torch_source = "rayline's venv, through a .pth file (pip offered a CUDA build)"
    pip(python, "install", "--quiet", TORCH)
    versions = installed(python, REPORTED)
    ray_home = module_home(python, "ray")
    if not ray_home.startswith(str(VENV)):
        raise RuntimeError(f"Flower's venv imports ray from {ray_home}, not from its own {VENV}")
    info = {
        "wanted": wanted,
        "python": str(python),
        "versions": versions,
        "torch_source": torch_source,
        "ray_imported_from": ray_home,
    }
    stamp.write_text(json.dumps(info, indent=2))
    return info


def module_home(python: Path, module: str) -> str:
    code = f"import {module}; print({module}.__file__)"
    return subprocess.run([str(python), "-c", code], check=True, text=True, capture_output=True).stdout.strip()


if __name__ == "__main__":
    print(json.dumps(ensure(), indent=2))
