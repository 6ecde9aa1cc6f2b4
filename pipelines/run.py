"""Entry point for `ray submit cluster.yaml pipelines/run.py -- PIPELINE.yaml [rayline run options]`.

`ray submit` copies only this file (to ~/run.py on the head) and runs it with the login shell's
python, which cluster.yaml's setup_commands make the project's venv. It runs `rayline run` from
the project copy that file_mounts put on the head (~/rayline, or $RAYLINE_PROJECT), joined to the
running cluster ($RAY_ADDRESS, which cluster.yaml sets on the head, else the local `ray start`).
"""

import os
import sys


def main(argv: list[str]) -> int:
    project = os.path.expanduser(os.environ.get("RAYLINE_PROJECT", "~/rayline"))
    if os.path.isdir(project):
        os.chdir(project)  # pipelines name their data, search space and storage relative to the project
    from rayline.cli import main as rayline

    address = os.environ.get("RAY_ADDRESS") or "auto"
    return rayline(["run", "--ray-address", address, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
