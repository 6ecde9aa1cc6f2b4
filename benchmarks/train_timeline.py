"""Where `rayline train`'s start-up goes, for train_bench.py: the CLI's own code path, run in this process so that
the embedded cluster is still up afterwards to answer for its actors (startup_timeline.creation_events).

    .venv/bin/python benchmarks/train_timeline.py --since EPOCH_S --json out.json --root R -- train P --set K=V ...

Everything after `--` is `rayline`'s command line. --since is when the caller launched this process (time.time());
every figure in the JSON is seconds after it. Each line the command prints is stamped as it is written, which
marks its phases: "training ..." (imports, config, embedded Ray cluster up), "data: ..." (preflight, read,
split, preprocessor fitted), "epoch 1/N" (first epoch reported), "registered model ..." (evaluated, baseline
fitted, registered). The first training step is epoch 0's epoch_started_at from the registered checkpoint.
"""

from __future__ import annotations

import time

IMPORTED_AT = time.time()  # before Ray, torch and rayline are imported

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from train_launch import MARKERS, latest_history  # noqa: E402


class StampedOutput(io.TextIOBase):
    """A stdout that also keeps each complete line with the time.time() it was written."""

    def __init__(self, target) -> None:
        self.target, self.pending, self.lines = target, "", []

    def write(self, text: str) -> int:
        self.target.write(text)
        self.pending += text
        *complete, self.pending = self.pending.split("\n")
        self.lines.extend((time.time(), line) for line in complete)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def phase_times(lines: list[tuple[float, str]], since: float) -> dict[str, float | None]:
    """Seconds after `since` at which each MARKERS line was first printed (None: never printed)."""
    found: dict[str, float | None] = dict.fromkeys(MARKERS)
    for stamp, line in lines:
        for phase, start in MARKERS.items():
            if found[phase] is None and line.startswith(start):
                found[phase] = round(stamp - since, 2)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--since", type=float, required=True, help="when the caller launched this process")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--root", required=True, help="the storage.root the command trains into")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then rayline's arguments")
    args = parser.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command

    from startup_timeline import creation_events

    from rayline.cli import main as rayline_main

    imports_done = time.time()
    stamped = sys.stdout = StampedOutput(sys.stdout)
    status = rayline_main(argv)
    returned = time.time()
    sys.stdout = stamped.target
    if status != 0:
        raise SystemExit(f"rayline {' '.join(argv)} exited {status}")
    time.sleep(2.0)  # task events reach the GCS about once a second
    phases = {
        "python_started_s": round(IMPORTED_AT - args.since, 2),
        "script_imports_done_s": round(imports_done - args.since, 2),  # Ray, torch, rayline.cli and its imports
        **phase_times(stamped.lines, args.since),
        "first_step_s": round(latest_history(Path(args.root))[0]["epoch_started_at"] - args.since, 2),
        "command_returned_s": round(returned - args.since, 2),
    }
    actors = creation_events(args.since)
    args.json.write_text(json.dumps({"phases": phases, "actors": actors}, indent=1))
    print(json.dumps(phases))


if __name__ == "__main__":
    main()
