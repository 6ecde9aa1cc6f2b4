"""TensorBoard event files for a run on an object store: written to a local folder by tensorboardX, and copied
whole to the store after each epoch by a background thread, so a slow or failing store never holds training
back. Each upload is one PUT of the file as it is then, which readers see whole (TensorBoard reads s3:// logdirs
through boto3)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from rayline.storage import open_root


class EventMirror:
    def __init__(self, local: Path, remote_uri: str, warn: Callable[[str], None]):
        self.local, self.remote_uri, self.warn = local, remote_uri, warn
        self._changed = threading.Event()
        self._stopping = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="rayline-tensorboard-mirror", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """New events were flushed locally: upload them soon (several calls before an upload make one)."""
        self._changed.set()

    def close(self, timeout_s: float) -> None:
        """Upload what is left, waiting at most timeout_s."""
        self._stopping = True
        self._changed.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.warn(f"TensorBoard files did not reach {self.remote_uri.split('?')[0]} within {timeout_s:g} s")

    def _run(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            if not self._failed:
                self._upload()
            if self._stopping and not self._changed.is_set():
                return

    def _upload(self) -> None:
        try:
            filesystem, base = open_root(self.remote_uri)
            for name in sorted(os.listdir(self.local)):
                with filesystem.open_output_stream(f"{base.rstrip('/')}/{name}") as out:
                    out.write((self.local / name).read_bytes())
        except Exception as error:  # a store that refuses or is down: warn once, training goes on
            self._failed = True
            self.warn(f"TensorBoard files could not be copied to {self.remote_uri.split('?')[0]} ({error})")
