"""A real MLflow tracking server on 127.0.0.1 for tests: SQLite backend store, artifacts proxied to a local
directory. Start it with `MlflowServer(tmp_dir)` (or as a context manager), use `.uri`, then `.stop()`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from children import end_with_parent
from rayline.runtime import free_port

START_TIMEOUT_S = 120.0


def mlflow_executable() -> str:
    path = Path(sys.executable).parent / "mlflow"
    if not path.exists():
        raise RuntimeError(f"no mlflow executable next to {sys.executable}; pip install 'mlflow>=3' into that env")
    return str(path)


class MlflowServer:
    """`mlflow server` as a subprocess in its own session, so stop() can signal all its workers."""

    def __init__(self, directory: str | os.PathLike, *, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        command = [
            mlflow_executable(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.directory / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.directory / "artifacts"),
        ]
        # The job runner (huey consumers for server-side jobs) is not needed to track runs.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._log = open(self.directory / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=self.directory,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=end_with_parent,
        )
        started = time.monotonic()
        try:
            self._wait_healthy(start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"mlflow server on {self.uri} not healthy after {timeout_s:g} s; see {self._log.name}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout_s)
        # Workers may outlive the main process after SIGTERM; the group is ours alone.
        self._signal(signal.SIGKILL)
        self._log.close()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, MlflowServer(tmp) as server:
        print(f"{server.uri} healthy after {server.start_s:.1f} s")
