"""A real S3-compatible server for tests: moto's standalone server on 127.0.0.1, started and stopped by PID.

rayline talks to it as to any S3 endpoint (pyarrow's S3 client, credentials from the environment); boto3 is
used only to set the server up (buckets, and a user whose writes it refuses).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from children import end_with_parent
from http_client import http
from rayline.runtime import free_port

MOTO = Path(sys.executable).with_name("moto_server")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rayline-test", "AWS_SECRET_ACCESS_KEY": "rayline-test-secret"}
REGION = "us-east-1"
S3_TEST_ENVIRONMENT = {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    process: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, bucket: str, prefix: str = "") -> str:
        """An s3:// URI that carries this endpoint (pyarrow's query options), as a user could write it."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def client(self, service: str = "s3", **credentials: str):
        import boto3

        keys = credentials or {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"]}
        keys.setdefault("aws_secret_access_key", CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, **keys)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_s3_server(log: Path, *, free_actions: int | None = None) -> S3Server:
    """moto_server on a free port of 127.0.0.1. `free_actions`: the server checks credentials and IAM policies
    after that many requests (moto's INITIAL_NO_AUTH_ACTION_COUNT); None never checks them."""
    port = free_port()
    env = {**os.environ, **S3_TEST_ENVIRONMENT}
    if free_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(free_actions)
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=end_with_parent,
        )
    server = S3Server(process, port)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            http.get(f"{server.endpoint}/moto-api/", timeout=2)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not answer on port {port} in 60 s") from None
            time.sleep(0.2)


def read_only_user(server: S3Server, bucket: str) -> dict[str, str]:
    """Credentials (as environment variables) of a user who may read `bucket` but not write to it. Takes the
    four requests a server started with free_actions=4 allows before it checks policies."""
    server.create_bucket(bucket)
    iam = server.client("iam")
    iam.create_user(UserName="reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
