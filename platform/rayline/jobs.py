"""Pipelines as Ray Jobs: submit, follow, stop and list them through a running cluster's Jobs API.

The Jobs API is served by the cluster's dashboard (http://127.0.0.1:8265 on the head; open an SSH
tunnel to reach a remote one). The job runs `rayline run PIPELINE --no-serve` on the head with
the working directory uploaded. When the cluster uses token auth, every call carries the token,
found where Ray looks for it: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else
~/.ray/auth_token.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayline.config import ConfigError, apply_override, read_yaml_mapping, validate_config
from rayline.errors import RaylineError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray also skips what .gitignore lists (data/ among it) and .git, .venv, __pycache__.
EXCLUDES = [".rayline", "*.egg-info", ".pytest_cache", ".ruff_cache"]


class JobsError(RaylineError, RuntimeError):
    """A problem the user can fix: no token, the Jobs API unreachable or refusing, an unknown job."""


def dashboard_address(address: str | None = None) -> str:
    """The Jobs API to talk to: the one given, else $RAY_API_SERVER_ADDRESS, else $RAY_DASHBOARD_ADDRESS."""
    env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_DASHBOARD_ADDRESS")
    chosen = address or env or DEFAULT_ADDRESS
    return chosen if "://" in chosen else f"http://{chosen}"


def auth_token() -> str | None:
    """The cluster token as Ray's own clients find it; None when auth is disabled or there is none."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file():
        return path.read_text().strip() or None
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        raise JobsError(
            f"RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, or put the "
            f"cluster's token in {path} (`ray get-auth-token` prints it on the head)"
        )
    return None


def client(address: str | None = None):
    """A JobSubmissionClient for the cluster at `address`, carrying the token when there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        raise JobsError(
            f"the Jobs API at {url} refused the request: the cluster uses token auth and "
            + ("this token is not its token" if token else "no token was found")
            + "; set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token (`ray get-auth-token` on the head)"
        ) from None
    except ConnectionError:
        raise JobsError(
            f"cannot reach the Jobs API at {url}: is the cluster up, --dashboard its dashboard URL (port 8265 by "
            "default), and the SSH tunnel to it open (`ray dashboard cluster.yaml`, or "
            "`ssh -L 8265:localhost:8265 HEAD`)?"
        ) from None


def entrypoint(pipeline: str, overrides: list[str], *, serve: bool = False) -> str:
    """The shell command the job runs on the head: the same CLI a person would type."""
    command = ["rayline", "run", pipeline, *([] if serve else ["--no-serve"])]
    for override in overrides:
        command += ["--set", override]
    return shlex.join(command)


def check_submittable(pipeline: str, overrides: list[str], working_dir: str) -> tuple[str, Any]:
    """Validate the pipeline here, before anything reaches the cluster; return its path inside working_dir."""
    path = Path(pipeline).resolve()
    try:
        inside = path.relative_to(Path(working_dir).resolve())
    except ValueError:
        raise ConfigError(f"{pipeline}: must be inside the working directory {working_dir} that is uploaded") from None
    raw = read_yaml_mapping(path)
    for override in overrides:
        apply_override(raw, override)
    cfg = validate_config(raw, where=pipeline)
    root = cfg.storage.root
    if "://" not in root and not Path(root).is_absolute():
        raise ConfigError(
            f"{pipeline}: storage.root {root!r} is relative; in a job it would resolve inside the job's "
            "temporary working directory and the registry would be lost. Pass --set storage.root=PATH "
            "with a path every node can reach (shared storage), e.g. /mnt/rayline"
        )
    return inside.as_posix(), cfg


def submit(
    pipeline: str,
    *,
    address: str | None = None,
    overrides: list[str] = (),
    working_dir: str = ".",
    serve: bool = False,
    submission_id: str | None = None,
) -> str:
    """Submit `rayline run PIPELINE` as a Ray Job with working_dir uploaded; return the submission id."""
    inside, cfg = check_submittable(pipeline, list(overrides), working_dir)
    jobs = client(address)
    submission_id = submission_id or f"rayline-{cfg.name}-{uuid.uuid4().hex[:8]}"
    return jobs.submit_job(
        entrypoint=entrypoint(inside, list(overrides), serve=serve),
        submission_id=submission_id,
        runtime_env={"working_dir": working_dir, "excludes": EXCLUDES},
        metadata={"rayline_pipeline": cfg.name},
    )


def status(submission_id: str, address: str | None = None):
    """The job's JobDetails (status, message, start and end times, entrypoint)."""
    return call(lambda jobs: jobs.get_job_info(submission_id), address, submission_id)


def logs(submission_id: str, address: str | None = None) -> str:
    return call(lambda jobs: jobs.get_job_logs(submission_id), address, submission_id)


def stop(submission_id: str, address: str | None = None) -> bool:
    """Ask the job to stop (SIGTERM, then SIGKILL); False if it had already ended."""
    return call(lambda jobs: jobs.stop_job(submission_id), address, submission_id)


def list_jobs(address: str | None = None) -> list:
    return sorted(client(address).list_jobs(), key=lambda job: job.start_time or 0)


def follow(
    submission_id: str, address: str | None = None, *, out: Callable[[str], None] = print, poll_s: float = 1.0
) -> str:
    """Print the job's logs as they grow until it ends; return its final status."""
    jobs = client(address)
    call(lambda _: jobs.get_job_status(submission_id), address, submission_id, jobs)  # a clear error if unknown
    shown = 0
    while True:
        state = jobs.get_job_status(submission_id)
        text = jobs.get_job_logs(submission_id)
        if len(text) > shown:
            out(text[shown:].rstrip("\n"))
            shown = len(text)
        if state.is_terminal():
            return str(state)
        time.sleep(poll_s)


def call(action: Callable, address: str | None, submission_id: str, jobs=None):
    jobs = jobs or client(address)
    try:
        return action(jobs)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise JobsError(f"no job {submission_id!r} on the cluster at {dashboard_address(address)}") from None
        raise
