"""A scheduler that serves no HTTP does not import the HTTP server (most of aiohttp's web
side, and the portal): a restart pays for its imports before it can answer."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import scheduler.__main__
loaded = sorted(m for m in sys.modules if m.startswith(("scheduler.shell.http", "aiohttp.web")))
print(" ".join(loaded))
"""


def test_the_scheduler_imports_its_http_server_only_to_serve_http() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""
