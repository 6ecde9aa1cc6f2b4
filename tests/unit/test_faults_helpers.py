"""The fault helpers themselves, on plain processes (no Ray): a fault that is not really injected would let
the reliability suite pass for the wrong reason."""

from __future__ import annotations

import signal
import subprocess
import sys

from faults import alive, crash_process_group, freeze_writer, kill_processes_with_env, process_state, process_tree

# A parent that starts a grandchild in a session (and process group) of its own, as a raylet starts workers.
FAMILY = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("ready", flush=True)
time.sleep(600)
"""

# Writes a file in slow chunks, so it holds it open for seconds.
SLOW_WRITER = """
import sys, time
with open(sys.argv[1], "wb") as f:
    for _ in range(200):
        f.write(b"x" * 4096); f.flush(); time.sleep(0.05)
"""


def test_crashing_a_process_group_takes_every_descendant_with_it():
    parent = subprocess.Popen([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout.readline().strip() == "ready"
    family = process_tree(parent.pid)
    assert len(family) == 2, "the grandchild is found although it left the process group"

    crashed = crash_process_group(parent)

    assert set(family) <= set(crashed)
    assert not any(alive(pid) for pid in family)
    assert parent.returncode == -signal.SIGKILL


def test_a_writer_is_frozen_while_its_file_is_still_open(tmp_path):
    target = tmp_path / "out" / "model.pt"
    target.parent.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)])
    try:
        pid, path = freeze_writer(lambda: [writer.pid], target.parent, timeout_s=30)
        assert (pid, path) == (writer.pid, target)
        assert process_state(pid) == "T", "stopped mid-write"
        assert 0 < target.stat().st_size < 200 * 4096
    finally:
        writer.kill()
        writer.wait()


def test_leftovers_are_found_by_an_environment_value_only_they_hold(tmp_path):
    env_value = str(tmp_path)
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env={"FAULTS_TEST_MARK": env_value}
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert kill_processes_with_env("FAULTS_TEST_MARK", env_value) == [stray.pid]
        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
