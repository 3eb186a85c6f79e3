"""``stratus up --http`` serves the portal and API with the local cluster, protected by a token
it generates and prints: no second scheduler is needed to see the portal."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _require_nats

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    _require_nats()
    port = _free_port()
    argv = [sys.executable, "-m", "cli", "up", "--hosts", "1", "--http", f"127.0.0.1:{port}"]
    argv += ["--data-dir", str(tmp_path / "up"), "--nats-port", str(_free_port())]
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_API_TOKEN"}
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process, port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _post(url: str, body: object, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(60)
def test_up_with_http_prints_a_generated_token_that_guards_mutations(
    up: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = up
    assert process.stdout is not None
    printed: list[str] = []
    token = None
    for line in process.stdout:
        printed.append(line)
        if match := re.search(r"token\s+(\S{32,})", line):
            token = match.group(1)
        if "hosts up in" in line:
            break
    assert token is not None, "".join(printed)
    assert any(f"http://127.0.0.1:{port}/" in line for line in printed), "".join(printed)
    base = f"http://127.0.0.1:{port}"
    assert _post(f"{base}/v1/vms", {"name": "web-1", "size": "Small"}, None) == 401
    assert _post(f"{base}/v1/vms", {"name": "web-1", "size": "Small"}, "wrong") == 401
    assert _post(f"{base}/v1/vms", {"name": "web-1", "size": "Small"}, token) == 201
