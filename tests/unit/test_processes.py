"""The one process supervisor: a group is stopped whole, politely first, and a pid file finds it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from pipelines.processes import Supervisor, group_alive, start_group, stop_group, wait_http

# a leader that starts a child ignoring SIGINT and SIGTERM (as a LocalExecutor worker may outlive
# its scheduler), prints the child's pid, then waits
LEADER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def _child_pid(log) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text().strip() if log.exists() else ""
        if text:
            return int(text.splitlines()[0])
        time.sleep(0.05)
    raise TimeoutError(log.read_text())


def _gone(pid: int) -> bool:
    """The process exited (or is a zombie waiting to be reaped) within 5 s: SIGKILL is not instant."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(") ", 1)[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _group_gone(pgid: int) -> bool:
    """No process of the group is left but zombies (killed, waiting for init to reap them)."""
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not group_alive(pgid) or all(_gone(pid) for pid in _members(pgid))


def _members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


def test_stopping_the_leader_takes_the_lingering_child_with_it(tmp_path):
    log = tmp_path / "leader.log"
    proc = start_group([sys.executable, "-c", LEADER], dict(os.environ), log)
    child = _child_pid(log)
    # a generous grace: on a loaded machine the leader's exit may take seconds, and what matters is
    # how it left (SIGINT, not the SIGKILL that follows the grace), not how fast
    stop_group(proc, first=signal.SIGINT, grace=60)
    assert proc.returncode == -signal.SIGINT  # the leader left on SIGINT (Python re-raises it on exit)
    assert _gone(child) and _group_gone(proc.pid)


def test_a_group_named_by_its_pid_file_is_stopped_and_the_file_removed(tmp_path):
    said: list[str] = []
    logs, run = tmp_path / "logs", tmp_path / "run"
    services = Supervisor(logs=logs, env=dict(os.environ), pid_dir=run, say=said.append)
    services.start("sleeper", [sys.executable, "-c", LEADER])
    pid_file = run / "sleeper.pid"
    pgid = int(pid_file.read_text())
    child = _child_pid(logs / "sleeper.log")
    # another process (make down) knows only the pid file: it waits for the whole group, then kills
    # (here the leader is this test's own child, so it stays a zombie member until reaped below)
    stop_group(pgid, first=signal.SIGTERM, grace=1, kill_wait=1)
    assert _gone(child)
    services.procs["sleeper"].wait(5)
    assert _group_gone(pgid)
    services.stop()  # nothing left to stop: it still clears the file and says so
    assert not pid_file.exists() and said[-1] == "stopped sleeper"
    assert said[0].startswith("started sleeper (pid ")


def test_wait_http_gives_up_on_a_closed_port():
    started = time.monotonic()
    assert wait_http("http://127.0.0.1:9/health", timeout=0.5, interval=0.1) is False
    assert time.monotonic() - started < 5


def test_the_tests_servers_get_ports_no_outgoing_connection_can_take():
    import socket

    from conftest import ephemeral_ports, free_port

    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40  # picked at random, not one after the other
    for port in ports:
        assert 10_000 <= port < ephemeral_ports().start, port
    port = ports.pop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # and free when handed out
