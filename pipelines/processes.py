"""One way to run a service as a child: its own process group, its output in a file, stopped whole.

The demo loop, ``make up``/``make down``, infra validation's sandbox and the tests' servers all
start long-running processes (MLflow, Airflow's components, the model server). Each gets a new
session, so that stopping it reaches every process it started (the scheduler's workers too), and
stopping escalates from a polite signal to SIGKILL on a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def start_group(
    cmd: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen:
    """Start ``cmd`` in a new process group, appending its stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            list(cmd), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=tuple(pass_fds),
        )  # fmt: skip


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(
    target: subprocess.Popen | int, first: int = signal.SIGINT, grace: float = 15, kill_wait: float = 5
) -> None:
    """Stop a process group: ``first``, then SIGKILL after ``grace`` seconds.

    With the ``Popen`` of the group's leader, the wait is for the leader (and it is reaped), and the
    rest of the group is killed right after: workers that outlive their parent do not linger. With a
    bare process-group id (from a pid file), the wait is for the whole group.
    """
    proc = target if isinstance(target, subprocess.Popen) else None
    pgid = target.pid if isinstance(target, subprocess.Popen) else int(target)
    for sig, wait in ((first, grace), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _wait_gone(proc, pgid, wait):
            break
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(kill_wait)


def _wait_gone(proc: subprocess.Popen | None, pgid: int, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_http(url: str, timeout: float, interval: float = 1.0) -> bool:
    """Whether ``url`` answers with a success status within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # raises on error statuses too
                return True
        except OSError:
            time.sleep(interval)
    return False


@dataclass
class Supervisor:
    """Named process groups with their logs in ``logs``, stopped together in reverse order.

    With ``pid_dir``, each group's id is written to ``<pid_dir>/<name>.pid``, so that another
    process (``make down``) can stop what this one started.
    """

    logs: Path
    env: dict[str, str]
    pid_dir: Path | None = None
    say: Callable[[str], None] = print
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``name``; its output goes to ``<logs>/<name>.log``."""
        log_path = self.logs / f"{name}.log"
        proc = self.procs[name] = start_group(cmd, env or self.env, log_path)
        if self.pid_dir is not None:
            self.pid_dir.mkdir(parents=True, exist_ok=True)
            (self.pid_dir / f"{name}.pid").write_text(str(proc.pid))
        self.say(f"started {name} (pid {proc.pid}), log: {log_path}")
        return proc

    def stop(self) -> None:
        """Stop every group, the last started first."""
        for name, proc in reversed(list(self.procs.items())):
            stop_group(proc)
            if self.pid_dir is not None:
                (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
            self.say(f"stopped {name}")
        self.procs.clear()
