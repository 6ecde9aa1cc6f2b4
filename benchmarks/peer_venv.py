"""The peers' own virtualenv (benchmarks/.peer-venv): LitServe and what it pulls in, apart from rayline's.

Made once with `python -m venv` and pip, then reused while it holds the pinned packages. torch must be
the CPU build from the same range as rayline's (`torch>=2.6,<2.14`): pip is asked first what it would
install, and when that is a CUDA build (PyPI's Linux wheels are) the venv instead sees rayline's
own torch through a .pth file, where pip then finds it installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".peer-venv"
# pandas and pyarrow: the peers decode the model's outputs with rayline's own Preprocessor, which imports them.
PACKAGES = ["litserve==0.2.19", "numpy", "pyyaml", "pydantic", "pandas>=2.0", "pyarrow>=14"]
TORCH = "torch>=2.6,<2.14"
STAMP = "rayline-peer-venv.json"


def already_made(venv: Path, stamp_name: str, wanted: dict) -> dict | None:
    """What a virtualenv's stamp recorded, if it was made with exactly `wanted` and its python is still there."""
    stamp = venv / stamp_name
    if not (stamp.exists() and (venv / "bin" / "python").exists()):
        return None
    made = json.loads(stamp.read_text())
    return made if made.get("wanted") == wanted else None


def ensure() -> dict:
    """The venv's python and package versions, making or mending the venv if needed (about 30 s)."""
    python = VENV / "bin" / "python"
    stamp = VENV / STAMP
    wanted = {"packages": PACKAGES, "torch": TORCH}
    if (made := already_made(VENV, STAMP, wanted)) is not None:
        return made
    print(f"making the peers' virtualenv {VENV} (LitServe, {TORCH}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    torch_source = "own CPU wheel"
    if pulls_cuda_torch(python, VENV, [*PACKAGES, TORCH]):
        share_torch(python)
        torch_source = "rayline's venv, through a .pth file (pip offered a CUDA build)"
    pip(python, "install", "--quiet", *PACKAGES, TORCH)
    versions = installed(python, ["litserve", "torch", "fastapi", "uvicorn", "numpy", "pyzmq"])
    info = {"wanted": wanted, "python": str(python), "versions": versions, "torch_source": torch_source}
    stamp.write_text(json.dumps(info, indent=2))
    return info


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), "-m", "pip", *args], text=True, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


def pulls_cuda_torch(python: Path, venv: Path, packages: list[str]) -> bool:
    """Whether pip would install a CUDA torch (PyPI's Linux wheels are) for these packages into `venv`."""
    report = venv / "pip-report.json"
    pip(python, "install", "--dry-run", "--quiet", "--report", str(report), *packages)
    planned = json.loads(report.read_text())["install"]
    names = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in planned}
    return any(name.startswith("nvidia-") for name in names) or "+cpu" not in names.get("torch", "+cpu")


def share_torch(python: Path) -> None:
    """Put rayline's site-packages last on the peer venv's path, so its torch (and only what the venv lacks) is used."""
    import torch

    ours = Path(torch.__file__).resolve().parents[1]
    theirs = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        text=True,
        capture_output=True,
    ).stdout.strip()
    (Path(theirs) / "zz_rayline_torch.pth").write_text(f"{ours}\n")


def installed(python: Path, names: list[str]) -> dict[str, str]:
    code = f"import json, importlib.metadata as m\nprint(json.dumps({{n: m.version(n) for n in {names!r}}}))"
    out = subprocess.run([str(python), "-c", code], check=True, text=True, capture_output=True).stdout
    return json.loads(out)
