"""Start `fastlm serve` in a child process on a free loopback port and wait until it answers.

For scripts, tests and benchmarks that need a real server (development tooling, not installed):
the child is this Python running `-m fastlm serve`, bound to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str,
    args: Sequence[str] = (),
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 120.0,
    stdout=subprocess.DEVNULL,
) -> tuple[subprocess.Popen, str]:
    """(process, base url) of a server that answered GET /health with 200 within `timeout`
    seconds. Raises RuntimeError (with the child's stderr tail) if it exits or never answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "fastlm", "serve", model, "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not answer within {timeout:.0f} s")


def repo_env(root: Path, **extra: str) -> dict:
    """os.environ with `root` first on PYTHONPATH (run a checkout's code) plus `extra`."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
