"""The temporary Prefect server of a `dubflow run` with no server configured, as a child process
that dies with its parent.

Prefect's own temporary server stops only through `atexit`, so every run that is killed or crashes
leaves one running (a port and ~225 MB each). Ours is started the same way (uvicorn on Prefect's app
factory, loopback, no UI) but the kernel sends it SIGTERM when the `dubflow` process ends for any
reason, SIGKILL included (Linux `PR_SET_PDEATHSIG`); a normal end stops it first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STARTUP_TIMEOUT_S = 120.0  # a first start migrates a fresh database: tens of seconds on a loaded machine
STOP_WAIT_S = 10.0


class ServerStartError(Exception):
    """The temporary Prefect server did not answer in time."""


class ApiUnreachableError(Exception):
    """The configured Prefect API does not answer; found before any work starts."""


def check_reachable(api_url: str) -> None:
    """The configured API answers at all (any HTTP answer counts: a workspace may want its key first)."""
    parts = urllib.parse.urlsplit(api_url)
    shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"  # no userinfo
    try:
        urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiUnreachableError(f"the Prefect API at {shown} does not answer ({reason}); start that server, or "
                                  "unset PREFECT_API_URL to let the run start a temporary one") from None


class TemporaryServer:
    """`start()` launches the server without waiting; `wait_ready()` blocks until it answers, so the
    caller can import the flow (seconds of torch and diffusers) meanwhile."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(os.getpid()),
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"the temporary Prefect server exited with code {self.process.returncode}; "
                                       "run again, or set PREFECT_API_URL to a running Prefect server")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"the temporary Prefect server did not answer within {STARTUP_TIMEOUT_S:.0f} s; "
                               "set PREFECT_API_URL to a running Prefect server")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent(parent: int):
    """The child's pre-exec step: ask the kernel for SIGTERM when the parent ends, then make sure the
    parent did not end before the request took effect."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def pre_exec() -> None:
        if libc is None:
            return  # elsewhere the server is stopped by the normal and signal paths only
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return pre_exec


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
