"""Where the twspy server spends its time under the small-message echo load.

Usage: python bench/profile_twspy.py [--case echo-16B-c32-d1] [--duration 5] [--tool cprofile,perf,py-spy]
                                    [--server twspy|twspy-asyncio]

- ``cprofile``: the twspy echo server runs with a cProfile per thread (merged at the end),
  timed with each thread's CPU clock: exact call counts, but the profiler's own overhead
  inflates small functions.
- ``perf`` (when ``perf`` is installed and allowed): samples the unmodified server, kernel
  included: how the CPU splits between the kernel (system calls, thread switches), the
  interpreter and libc -- what a thread-per-client server pays besides its Python code.
- ``py-spy``: a sampling profiler of the Python stacks, installed into bench/.venv on first
  use. In some VMs its idle detection and ``--gil`` mode misattribute time to the thread
  blocked in ``recv``; trust it where its samples add up with the server's CPU use.

Each prints the top functions, plus the server's user/system CPU split for the run.
Files are kept in bench/results/ (profile-*.prof, *.perf.data, *.pyspy.txt).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import bootstrap  # noqa: E402

RESULTS = os.path.join(BENCH, "results")


def _bench(args: argparse.Namespace):  # a run.Bench with the given server already started
    import run
    bench_args = run.parse_args(["--reps", "1"])
    bench_args.gen_procs = args.gen_procs
    return run.Bench(bench_args)


def _case(case_id: str, duration: float):
    from cases import build_cases
    for case in build_cases(False, None):
        if case.id == case_id:
            case.duration, case.warmup = duration, 0.5
            case.latency = False
            return case
    raise SystemExit("unknown case %r (one of the echo-* cases of bench/run.py)" % case_id)


def profile_cprofile(args: argparse.Namespace) -> None:
    import pstats

    from procs import ServerProcess
    out = os.path.join(RESULTS, "profile-%s.prof" % args.case)
    bench = _bench(args)
    server = ServerProcess("twspy", bench.pinning, False, bench.log_dir, ["--profile", out])
    if not server.start():
        raise SystemExit("server did not start: %s" % server.error)
    bench.servers[("twspy", False)] = server
    try:
        run = bench.run_echo(_case(args.case, args.duration), "twspy")
        _print_run("cProfile (slowed down by the profiler)", run)
        time.sleep(0.5)  # let the client threads end: only finished threads are counted
    finally:
        server.stop()  # SIGTERM: the server writes the stats
    stats = pstats.Stats(out)
    stats.strip_dirs()
    print("\n== cProfile, by own time (tottime) ==")
    stats.sort_stats("tottime").print_stats(args.top)
    print("== cProfile, by cumulative time ==")
    stats.sort_stats("cumulative").print_stats(args.top)
    print("stats: %s" % os.path.relpath(out))


def _ensure_py_spy() -> str:
    exe = os.path.join(bootstrap.VENV, "bin", "py-spy")
    if not os.path.exists(exe):
        bootstrap.pip_install(["py-spy"])
    return exe


def _function(frame: str) -> str:
    """``name (file.py:123)`` -> ``name (file.py)``: one row per function, not per line."""
    name, _, where = frame.partition(" (")
    return "%s (%s)" % (name, where.rsplit(":", 1)[0]) if where else name


def summarize_collapsed(path: str, top: int) -> tuple[int, list[tuple[str, int, int]]]:
    """From py-spy's raw (collapsed) output: samples, and (function, own, total) per function."""
    own: dict[str, int] = collections.Counter()
    total: dict[str, int] = collections.Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [_function(fr) for fr in stack.split(";")
                      if not fr.startswith("process ") and not fr.startswith("thread ")]
            if not frames:
                continue
            samples += count
            own[frames[-1]] += count
            for frame in set(frames):
                total[frame] += count
    rows = [(name, own[name], total[name]) for name in total]
    rows.sort(key=lambda r: -r[1])
    return samples, rows


def profile_py_spy(args: argparse.Namespace) -> None:
    from procs import ServerProcess
    exe = _ensure_py_spy()
    out = os.path.join(RESULTS, "profile-%s.pyspy.txt" % args.case)
    bench = _bench(args)
    server = ServerProcess(args.server, bench.pinning, False, bench.log_dir)
    if not server.start():
        raise SystemExit("server did not start: %s" % server.error)
    bench.servers[(args.server, False)] = server
    spy = None
    try:
        case = _case(args.case, args.duration + 1.0)
        # Sample during the measured part only: start after the warm-up, stop before the end.
        spy = subprocess.Popen([exe, "record", "--pid", str(server.pid), "--duration", str(int(args.duration)),
                                "--rate", str(args.rate), "--format", "raw", "--output", out, "--nonblocking"]
                               + (["--gil"] if args.gil else []) + (["--idle"] if args.idle else []),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        run = bench.run_echo(case, args.server)
        _print_run("py-spy", run)
        output = spy.communicate(timeout=args.duration + 30)[0].decode(errors="replace")
        if spy.returncode != 0:
            raise SystemExit("py-spy failed: %s" % output[-500:])
        print("\n".join(line for line in output.splitlines() if "Samples" in line))
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(5)
        server.stop()
    samples, rows = summarize_collapsed(out, args.top)
    if not samples:
        print("py-spy recorded no samples of active threads (try --gil or --idle)")
        return
    print("\n== py-spy: %d samples of active threads; own time (leaf) and total time (on the stack) ==" % samples)
    print("%6s %6s  %s" % ("own%", "total%", "function (file:line)"))
    for name, own, total in rows[:args.top]:
        print("%5.1f%% %5.1f%%  %s" % (100 * own / samples, 100 * total / samples, name))
    print("\n== by total time ==")
    for name, own, total in sorted(rows, key=lambda r: -r[2])[:args.top]:
        print("%5.1f%% %5.1f%%  %s" % (100 * own / samples, 100 * total / samples, name))
    print("raw samples: %s" % os.path.relpath(out))


def profile_perf(args: argparse.Namespace) -> None:
    import shutil

    from procs import ServerProcess
    perf = shutil.which("perf")
    if not perf:
        print("perf: not installed, skipped")
        return
    out = os.path.join(RESULTS, "profile-%s.perf.data" % args.case)
    bench = _bench(args)
    server = ServerProcess(args.server, bench.pinning, False, bench.log_dir)
    if not server.start():
        raise SystemExit("server did not start: %s" % server.error)
    bench.servers[(args.server, False)] = server
    recorder = None
    try:
        case = _case(args.case, args.duration + 1.0)
        recorder = subprocess.Popen([perf, "record", "-e", "cpu-clock", "-F", str(args.rate), "-g", "-p",
                                     str(server.pid), "-o", out, "--", "sleep", str(args.duration)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        run = bench.run_echo(case, args.server)
        _print_run("perf", run)
        err = recorder.communicate(timeout=args.duration + 30)[1].decode(errors="replace")
        if recorder.returncode != 0:
            print("perf failed (perf_event_paranoid? permissions?): %s" % err.strip()[-300:])
            return
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.kill()
            recorder.wait(5)
        server.stop()
    for sort in ("dso", "sym"):
        report = subprocess.run([perf, "report", "-i", out, "--no-children", "--sort", sort, "-g", "none",
                                 "--percent-limit", "0.5", "--stdio"], capture_output=True, text=True, timeout=120)
        lines = [line for line in report.stdout.splitlines() if line.strip() and not line.startswith("#")]
        print("\n== perf, by %s (kernel symbols are [k], user space [.]) ==" % ("shared object" if sort == "dso"
                                                                                 else "symbol"))
        print("\n".join(lines[:args.top]))
    print("perf data: %s" % os.path.relpath(out))


def _print_run(tool: str, run: dict[str, Any]) -> None:
    print("%s run: %.0f msg/s, server CPU %.0f%% (user %.0f%%, system %.0f%%), %.1f us of server CPU per message" % (
        tool, run["value"], run["server_cpu_pct"], run["server_cpu_pct"] - run["server_sys_pct"],
        run["server_sys_pct"], run["server_cpu_us_per_msg"] or 0))


def main(argv: list[str]) -> int:
    bootstrap.ensure_venv([os.path.abspath(__file__)] + argv)
    parser = argparse.ArgumentParser(prog="bench/profile_twspy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="echo-16B-c32-d1", help="an echo case of bench/run.py")
    parser.add_argument("--server", default="twspy", choices=["twspy", "twspy-asyncio"],
                        help="the threaded server (default) or the asyncio one (perf and py-spy only)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (default 5)")
    parser.add_argument("--tool", default="cprofile,perf",
                        help="comma-separated: cprofile, perf, py-spy (default cprofile,perf)")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    parser.add_argument("--gen-procs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000, help="perf and py-spy samples per second (default 1000)")
    parser.add_argument("--gil", action="store_true", help="py-spy: only the thread holding the GIL")
    parser.add_argument("--idle", action="store_true", help="py-spy: include idle (blocked) threads")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60:
        parser.error("--duration must be between 1 and 60 seconds")
    from procs import raise_nofile
    raise_nofile()
    os.makedirs(RESULTS, exist_ok=True)
    tools = [t.strip() for t in args.tool.split(",") if t.strip()]
    for tool in tools:
        if tool not in ("cprofile", "perf", "py-spy"):
            parser.error("unknown tool %r" % tool)
        if tool == "cprofile" and args.server != "twspy":
            parser.error("cprofile profiles the threaded server's threads only: --tool perf or py-spy")
    if not 1 <= args.rate <= 10000:
        parser.error("--rate must be between 1 and 10000")
    for tool in tools:
        {"cprofile": profile_cprofile, "perf": profile_perf, "py-spy": profile_py_spy}[tool](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
