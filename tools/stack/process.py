"""Child processes of the embedded stack: started in their own session, logged to a file, stopped for sure.

Each component runs in its own process group so that stopping it also stops whatever it spawned
(Triton's Python-backend stubs, for instance), and so that a detached stack survives the shell that
started it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A component could not be started or checked; the message says what to do about it."""


class ServiceUnreachable(StackError):
    """A service a command needs (the Kafka broker, Redis, Triton) did not answer at its address."""

    def __init__(self, service: str, address: str, reason: object) -> None:
        super().__init__(f"{service} unreachable at {address} ({' '.join(str(reason).split())}); "
                         f"is it running, and is the address right?")


class Terminated(BaseException):
    """Raised in the main thread when a command that owns a stack gets SIGTERM, SIGHUP or SIGINT.

    Its children run in sessions of their own (so a detached stack survives its shell), so nothing but the
    command itself can stop them: the exception unwinds through the ``finally`` and ``except BaseException``
    blocks that stop the stack. A BaseException, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _Termination:
    """The state behind ``stop_on_termination`` and ``termination_deferred``: the first signal raises
    ``Terminated`` (later ones are ignored, so they cannot interrupt the stack's stop), except inside a
    deferred section, where it is raised when the section ends."""

    def __init__(self) -> None:
        self.raised = False
        self.deferring = 0
        self.pending: int | None = None

    def handle(self, signum: int, _frame) -> None:
        if self.raised or self.pending is not None:
            return
        if self.deferring:
            self.pending = signum
            return
        self.raised = True
        raise Terminated(signum)


_termination: _Termination | None = None
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@contextmanager
def stop_on_termination():
    """While active, SIGTERM, SIGHUP and SIGINT raise ``Terminated`` in the main thread (see there)."""
    global _termination
    _termination = _Termination()
    previous = {sig: signal.signal(sig, _termination.handle) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _termination = None


@contextmanager
def termination_deferred():
    """A signal that arrives inside is raised at its end: a child spawned inside is recorded in the stack's
    state before the unwinding stops the stack, so it is stopped with the others, not left behind."""
    termination = _termination
    if termination is None:
        yield
        return
    termination.deferring += 1
    try:
        yield
    finally:
        termination.deferring -= 1
        if not termination.deferring and termination.pending is not None and not termination.raised:
            termination.raised = True
            raise Terminated(termination.pending)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int, owner: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(f"{owner}: port {host}:{port} is already taken ({exc.strerror}); "
                             f"free it or choose another port") from None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_executable(path: Path | str, component: str, hint: str) -> str:
    path = str(path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise StackError(f"{component}: executable {path} not found; {hint}")
    return path


@dataclass
class ManagedProcess:
    name: str
    pid: int
    log_path: Path

    @classmethod
    def spawn(cls, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> "ManagedProcess":
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
            )
        return cls(name=name, pid=proc.pid, log_path=log_path)

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float) -> None:
        stop_group(self.pid, timeout_s)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone: reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_not_zombie(int(p)) for p in _group_members(pgid))


def _group_members(pgid: int) -> list[str]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    members.append(entry)
            except (OSError, IndexError, ValueError):
                continue
    return members


def stop_group(pgid: int, timeout_s: float) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after ``timeout_s``. A paused group
    (SIGSTOP) is continued after the SIGTERM, so that it can act on it."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
            if sig == signal.SIGTERM:
                os.killpg(pgid, signal.SIGCONT)
        except ProcessLookupError:
            return
        if _wait_gone(pgid, wait):
            return


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL the whole process group and return once every member is gone (reaped if it is our child)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait_gone(pgid, timeout_s):
        raise StackError(f"process group {pgid} still alive {timeout_s:.0f}s after SIGKILL")


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the whole process group (SIGSTOP/SIGCONT to pause and resume a component)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        raise StackError(f"process group {pgid} is not running") from None


def _wait_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        pid_alive(pgid)  # reaps our own child when it has exited
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
