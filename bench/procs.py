"""Processes: CPU pinning, server processes (started and stopped by PID), /proc readings."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["Pinning", "ServerProcess", "cpu_seconds", "cpu_times", "machine_busy_seconds", "rss_kib", "raise_nofile",
           "stop_all", "die_with_parent"]

BENCH = os.path.dirname(os.path.abspath(__file__))
_CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG).

    A bench killed with SIGKILL cannot stop its servers itself: they stop on their own.
    Survives the exec of taskset and of the server. No-op elsewhere.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new (soft, hard)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Pinning:
    """Which cores the servers and the load generator get.

    With two or more usable cores the servers get the last one (through ``taskset``, or
    ``sched_setaffinity`` when taskset is missing) and this process, and so every load
    generator process it forks, gets the others.
    """

    def __init__(self, enabled: bool = True) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.taskset = shutil.which("taskset")
        self.enabled = enabled and len(cpus) >= 2
        self.server_cpus: list[int] = cpus[-1:] if self.enabled else cpus
        self.generator_cpus: list[int] = cpus[:-1] if self.enabled else cpus
        if self.enabled:
            os.sched_setaffinity(0, self.generator_cpus)

    def prefix(self) -> list[str]:
        if self.enabled and self.taskset:
            return [self.taskset, "-c", ",".join(map(str, self.server_cpus))]
        return []

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned (fewer than 2 usable cores or --no-pin)"
        how = "taskset" if self.taskset else "sched_setaffinity"
        return "servers on CPU %s, load generator on CPU %s (%s)" % (
            ",".join(map(str, self.server_cpus)), ",".join(map(str, self.generator_cpus)), how)


class ServerProcess:
    """One echo server from bench/servers.py, in its own process (stopped by its PID)."""

    def __init__(self, kind: str, pinning: Pinning, compression: bool = False, log_dir: str | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.kind, self.compression, self.extra_args = kind, compression, list(extra_args)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.error = ""
        self.log_path = os.path.join(log_dir, "%s%s.log" % (kind, "-deflate" if compression else "")) \
            if log_dir else os.devnull
        self._pinning = pinning

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> bool:
        """Start it and read its port; False (and ``error``) when it could not start."""
        cmd = self._pinning.prefix() + [sys.executable, os.path.join(BENCH, "servers.py"), self.kind]
        if self.compression:
            cmd.append("--compression")
        cmd += self.extra_args
        cpus = self._pinning.server_cpus if self._pinning.enabled and not self._pinning.taskset else None

        def preexec() -> None:
            die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)
        with open(self.log_path, "ab") as log:
            # taskset execs the server: the PID we get is the server's.
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=preexec, close_fds=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.error = "no port within %ds" % START_TIMEOUT
                break
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                self.error = "exited with %s" % self.proc.wait(STOP_TIMEOUT)
                break
            line += chunk
        if line.startswith(b"PORT "):
            self.port = int(line.split()[1])
            return True
        self.error = self.error or "unexpected output %r" % line[:80]
        self.stop()
        return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait; only this PID."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        if proc.stdout is not None:
            proc.stdout.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        return "<server %s%s pid=%s port=%d>" % (self.kind, " deflate" if self.compression else "",
                                                 self.proc.pid if self.proc else "-", self.port)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a whole process (all its threads), from /proc/PID/stat."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (1-based), so 11 and 12 here.
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process."""
    return sum(cpu_times(pid))


def machine_busy_seconds() -> float:
    """CPU time spent in user and system mode by every process on the machine (all CPUs).

    Minus the CPU time of the bench's own processes, it tells how busy the rest of the
    machine was while a run was measured: other work on the cores skews every number.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise OSError("no VmRSS for %d" % pid)


def stop_all(servers: dict[object, ServerProcess]) -> None:
    for server in list(servers.values()):
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            print("bench: could not stop %r: %s" % (server, exc), file=sys.stderr)
