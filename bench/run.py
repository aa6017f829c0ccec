"""``make bench``: twspy against websockets, aiohttp and raw TCP, on loopback.

Usage: python bench/run.py [--quick] [--scenario a,b,...] [--servers twspy,raw-tcp,...]
                           [--reps N] [--duration S] [--json PATH] [--no-pin]

Scenarios (see bench/README.md): a echo, b throughput, c connections/s, d memory,
e latency, f client side, g permessage-deflate. The first run makes bench/.venv and
installs the peers into it; every later run re-executes itself inside that venv.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Callable

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import bootstrap  # noqa: E402  (the venv comes first: the rest may import the peers)

RESULTS = os.path.join(BENCH, "results")
RUN_TIMEOUT = 120.0  # one measurement, including connecting and closing


def parse_args(argv: list[str]) -> argparse.Namespace:
    from cases import ALIASES, SCENARIOS
    from servers import BASE_KINDS, KINDS
    parser = argparse.ArgumentParser(prog="bench/run.py", description="twspy benchmarks against peers and raw TCP.")
    parser.add_argument("--quick", action="store_true", help="fewer cases, one repetition, shorter runs (<1 min)")
    parser.add_argument("--scenario", "-s", action="append", default=[],
                        help="only these scenarios: letters a-g or names (%s); repeatable or comma-separated" %
                        ", ".join(sorted(ALIASES)))
    parser.add_argument("--servers", default="", help="only these servers, comma-separated (%s)" % ", ".join(KINDS))
    parser.add_argument("--base", metavar="DIR", default="",
                        help="also run twspy and twspy.asyncio from DIR, another checkout (e.g. `git worktree add "
                        "/tmp/base HEAD~1`, `make -C /tmp/base build`), as twspy-base and twspy-asyncio-base, "
                        "interleaved with the others: before and after a change in one run")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each run (default 3, quick 1)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per run (default 1.0)")
    parser.add_argument("--idle-conns", type=int, default=None, help="connections for (d) (default 1000)")
    parser.add_argument("--gen-procs", type=int, default=2, help="load generator processes for multi-connection "
                        "runs (default 2)")
    parser.add_argument("--json", default=os.path.join(RESULTS, "latest.json"), help="where to write the results")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and generator to separate cores")
    parser.add_argument("--noise", type=float, default=25.0, metavar="PCT",
                        help="a run during which other processes used more than PCT %% of a core is redone "
                        "(twice at most, the quietest attempt kept; default 25)")
    parser.add_argument("--retry-budget", type=float, default=None, metavar="S",
                        help="seconds spent at most on redoing noisy runs (default 30, quick 10)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to go quiet (shared "
                        "machines)")
    args = parser.parse_args(argv)
    wanted = set()
    for item in args.scenario:
        for name in filter(None, (s.strip().lower() for s in item.split(","))):
            letter = ALIASES.get(name, name)
            if letter not in SCENARIOS:
                parser.error("unknown scenario %r" % name)
            wanted.add(letter)
    args.scenarios = wanted
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()] or \
        [k for k in KINDS if k not in BASE_KINDS]
    if args.base:
        if not os.path.isfile(os.path.join(args.base, "twspy", "__init__.py")):
            parser.error("--base %s: not a twspy checkout" % args.base)
        os.environ["TWSPY_BENCH_BASE"] = os.path.abspath(args.base)  # the server processes inherit it
        for kind, base in (("twspy", "twspy-base"), ("twspy-asyncio", "twspy-asyncio-base")):
            if kind in args.server_list and base not in args.server_list:
                args.server_list.append(base)
    for s in args.server_list:
        if s not in KINDS:
            parser.error("unknown server %r" % s)
        if s in BASE_KINDS and not args.base:
            parser.error("%s needs --base DIR" % s)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if not 1 <= args.reps <= 20:
        parser.error("--reps must be between 1 and 20")
    if args.duration is not None and not 0.1 <= args.duration <= 30:
        parser.error("--duration must be between 0.1 and 30 seconds")
    if args.retry_budget is None:
        args.retry_budget = 10.0 if args.quick else 30.0
    if not 0 <= args.retry_budget <= 3600:
        parser.error("--retry-budget must be between 0 and 3600 seconds")
    if not 0 < args.noise <= 1000:
        parser.error("--noise must be a positive percentage")
    if not 0 <= args.wait_quiet <= 600:
        parser.error("--wait-quiet must be between 0 and 600 seconds")
    if args.idle_conns is not None and not 1 <= args.idle_conns <= 10000:
        parser.error("--idle-conns must be between 1 and 10000")
    if not 1 <= args.gen_procs <= 64:
        parser.error("--gen-procs must be between 1 and 64")
    return args


class Bench:
    """Runs the cases: servers started once and reused (fresh ones for memory), runs interleaved."""

    def __init__(self, args: argparse.Namespace) -> None:
        from procs import Pinning
        self.args = args
        self.pinning = Pinning(not args.no_pin)
        self.servers: dict[tuple[str, bool], Any] = {}
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.log_dir = os.path.join(RESULTS, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        for name in os.listdir(self.log_dir):  # the servers' stderr, this run's only
            if name.endswith(".log"):
                os.remove(os.path.join(self.log_dir, name))
        self.mp = multiprocessing.get_context("fork")
        self.retry_budget = args.retry_budget  # seconds left for redoing noisy runs

    # -- servers ---------------------------------------------------------------------------
    def server(self, kind: str, compression: bool = False) -> Any:
        """A running server of ``kind`` (started on first use, restarted if it died)."""
        from procs import ServerProcess
        key = (kind, compression)
        server = self.servers.get(key)
        if server is not None and server.alive():
            return server
        if server is not None:
            server.stop()
        server = ServerProcess(kind, self.pinning, compression, self.log_dir)
        self.servers[key] = server
        if not server.start():
            raise RuntimeError("%s did not start: %s (see %s)" % (kind, server.error, server.log_path))
        return server

    def stop_servers(self) -> None:
        from procs import stop_all
        stop_all(self.servers)
        self.servers.clear()

    # -- load generator processes ------------------------------------------------------------
    def run_workers(self, worker: Callable, cfgs: list[dict[str, Any]], pid: int | None, warmup: float,
                    duration: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Fork the workers, wait until all are ready, start them together, collect their results.

        Also reads the server's CPU time over the measured window. Every wait is bounded and
        every worker is joined (killed by PID if it hangs).
        """
        from procs import cpu_times, machine_busy_seconds
        procs, pipes = [], []
        try:
            for cfg in cfgs:
                parent, child = self.mp.Pipe()
                proc = self.mp.Process(target=worker, args=(child, cfg), daemon=True)
                proc.start()
                child.close()
                procs.append(proc)
                pipes.append(parent)
            for pipe in pipes:
                kind, value = self._receive(pipe, RUN_TIMEOUT)
                if kind != "ready":
                    raise RuntimeError(value)
            t0 = time.monotonic() + 0.05
            for pipe in pipes:
                pipe.send(("go", t0))
            server: dict[str, float] = {}
            if pid is not None:
                _sleep_until(t0 + warmup)
                (u0, s0), m0, w0 = cpu_times(pid), machine_busy_seconds(), time.monotonic()
                _sleep_until(t0 + warmup + duration)
                (u1, s1), m1, w1 = cpu_times(pid), machine_busy_seconds(), time.monotonic()
                server = {"cpu": u1 - u0 + s1 - s0, "sys": s1 - s0, "elapsed": w1 - w0, "machine": m1 - m0}
            results = []
            for pipe in pipes:
                kind, value = self._receive(pipe, warmup + duration + RUN_TIMEOUT)
                if kind != "done":
                    raise RuntimeError(value)
                results.append(value)
            if server:
                # What the rest of the machine used meanwhile, in % of one core.
                ours = server["cpu"] + sum(r.get("cpu", 0.0) for r in results)
                server["foreign_pct"] = max(0.0, 100 * (server["machine"] - ours) / server["elapsed"])
            return results, server
        finally:
            for pipe in pipes:
                try:
                    pipe.send(("stop", None))
                except (OSError, ValueError):
                    pass
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            for pipe in pipes:
                pipe.close()

    @staticmethod
    def _receive(pipe: Any, timeout: float) -> tuple[str, Any]:
        if not pipe.poll(timeout):
            return "error", "no answer from a load generator process within %ds" % timeout
        try:
            return pipe.recv()
        except EOFError:
            return "error", "a load generator process died"

    # -- one run of each kind --------------------------------------------------------------------
    def workload(self, case: Any, target: Any) -> Any:
        from loadgen import Workload, json_payload, make_payload
        payload = json_payload(case.size) if case.payload == "json" else make_payload(case.size, case.opcode)
        return Workload(target, payload, case.opcode)

    def target(self, kind: str, port: int, deflate: bool = False) -> Any:
        from loadgen import Target
        return Target(port, "raw" if kind == "raw-tcp" else "ws", deflate)

    def run_echo(self, case: Any, kind: str) -> dict[str, Any]:
        from loadgen import echo_worker
        server = self.server(kind, case.deflate)
        target = self.target(kind, server.port, case.deflate)
        workload = self.workload(case, target)
        nprocs = 1 if case.conns == 1 else max(1, min(case.conns, self.args.gen_procs))
        split = [case.conns // nprocs + (1 if i < case.conns % nprocs else 0) for i in range(nprocs)]
        cfgs = [{"target": target, "workload": workload, "conns": n, "depth": case.depth, "warmup": case.warmup,
                 "duration": case.duration, "latency": case.latency} for n in split]
        results, srv = self.run_workers(echo_worker, cfgs, server.pid, case.warmup, case.duration)
        rate = sum(r["count"] / r["elapsed"] for r in results if r["elapsed"] > 0)
        count = sum(r["count"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        gen_cpu = sum(r["cpu"] for r in results)
        run = {"msgs_per_s": rate, "value": rate * case.size / (1 << 20) if case.unit == "MiB/s" else rate,
               "server_cpu_pct": 100 * srv["cpu"] / srv["elapsed"],
               "server_sys_pct": 100 * srv["sys"] / srv["elapsed"],
               "server_cpu_us_per_msg": 1e6 * srv["cpu"] / srv["elapsed"] / rate if rate else None,
               "gen_cpu_pct": 100 * gen_cpu / elapsed,
               "gen_cpu_us_per_msg": 1e6 * gen_cpu / count if count else None,
               "gen_procs": nprocs, "gen_cores": min(nprocs, len(self.pinning.generator_cpus) or 1),
               "unclean_closes": sum(r.get("unclean", 0) for r in results),
               "foreign_cpu_pct": srv["foreign_pct"]}
        if case.latency:
            lat = sorted(x for r in results for x in r.get("latencies", ()))
            if lat:
                run["p50"] = 1e6 * lat[len(lat) // 2]
                run["p99"] = 1e6 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                run["latency_samples"] = len(lat)
        return run

    def run_connect(self, case: Any, kind: str) -> dict[str, Any]:
        from loadgen import connect_worker
        server = self.server(kind)
        target = self.target(kind, server.port)
        cfg = {"target": target, "workload": self.workload(case, target), "warmup": case.warmup,
               "duration": case.duration}
        results, srv = self.run_workers(connect_worker, [cfg] * case.conns, server.pid, case.warmup, case.duration)
        rate = sum(r["count"] / r["elapsed"] for r in results)
        run = {"value": rate, "server_cpu_pct": 100 * srv["cpu"] / srv["elapsed"],
               "server_cpu_us_per_conn": 1e6 * srv["cpu"] / srv["elapsed"] / rate if rate else None,
               "gen_cpu_pct": 100 * sum(r["cpu"] for r in results) / case.duration,
               "failed": sum(r["errors"] for r in results), "unclean_closes": sum(r["unclean"] for r in results),
               "foreign_cpu_pct": srv["foreign_pct"]}
        first = [r["first_error"] for r in results if r["first_error"]]
        if first:
            run["first_error"] = first[0]
        return run

    def run_memory(self, case: Any, kind: str) -> dict[str, Any]:
        """A fresh server: VmRSS after one warm-up connection, then with ``conns`` idle ones."""
        from loadgen import idle_worker, one_connection
        from procs import ServerProcess, rss_kib
        server = ServerProcess(kind, self.pinning, False, self.log_dir)
        procs = []
        try:
            if not server.start():
                raise RuntimeError("%s did not start: %s" % (kind, server.error))
            target = self.target(kind, server.port)
            workload = self.workload(case, target)
            one_connection(target, workload)  # imports, first thread, first buffers: not per connection
            time.sleep(0.3)
            before = rss_kib(server.pid)
            parent, child = self.mp.Pipe()
            proc = self.mp.Process(target=idle_worker, args=(child, {"target": target, "workload": workload,
                                                                     "conns": case.conns}), daemon=True)
            proc.start()
            procs.append(proc)
            child.close()
            try:
                kind_, value = self._receive(parent, RUN_TIMEOUT)
                if kind_ != "ready":
                    raise RuntimeError(value)
                # Let the server settle (threads started, buffers allocated), bounded.
                after, deadline = rss_kib(server.pid), time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    time.sleep(0.25)
                    now = rss_kib(server.pid)
                    if abs(now - after) <= max(64, after // 200):
                        after = now
                        break
                    after = now
                parent.send(("go", 0))
                kind_, result = self._receive(parent, RUN_TIMEOUT)
                if kind_ != "done":
                    raise RuntimeError(result)
            finally:
                parent.close()
            return {"value": (after - before) / case.conns, "rss_before_kib": before, "rss_after_kib": after,
                    "unclean_closes": result["unclean"]}
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            server.stop()

    def client_server(self) -> str:
        """The server for (f): the fastest asyncio peer on one 16 B echo (measured, briefly)."""
        if getattr(self, "_client_server", None):
            return self._client_server
        from cases import Case
        best, best_rate = "websockets-asyncio", 0.0
        for kind in ("websockets-asyncio", "aiohttp"):
            probe = Case("probe", "f", "probe", "echo", "msg/s", size=16, warmup=0.1, duration=0.4)
            try:
                rate = self.run_echo(probe, kind)["value"]
            except Exception as exc:
                print("  probe %s failed: %s" % (kind, exc), flush=True)
                continue
            print("  client-side server probe: %s %.0f msg/s" % (kind, rate), flush=True)
            if rate > best_rate:
                best, best_rate = kind, rate
        self._client_server = best
        return best

    def run_client(self, case: Any, lib: str) -> dict[str, Any]:
        from loadgen import client_worker
        kind = self.client_server()
        case.server = kind
        server = self.server(kind)
        target = self.target(kind, server.port)
        cfg = {"lib": lib, "target": target, "workload": self.workload(case, target), "warmup": case.warmup,
               "duration": case.duration, "root": ROOT}
        results, srv = self.run_workers(client_worker, [cfg], server.pid, case.warmup, case.duration)
        r = results[0]
        rate = r["count"] / r["elapsed"]
        return {"value": rate, "server": kind, "client_cpu_pct": 100 * r["cpu"] / r["elapsed"],
                "client_cpu_us_per_msg": 1e6 * r["cpu"] / r["count"] if r["count"] else None,
                "server_cpu_pct": 100 * srv["cpu"] / srv["elapsed"], "foreign_cpu_pct": srv["foreign_pct"]}

    def wait_quiet(self, limit: float, threshold: float = 25.0) -> None:
        """Wait (at most ``limit`` seconds) until other processes use < ``threshold`` % of a core."""
        from procs import cpu_seconds, machine_busy_seconds
        deadline = time.monotonic() + limit
        while True:
            ours = [s.pid for s in self.servers.values() if s.alive()]
            m0, c0, w0 = machine_busy_seconds(), sum(cpu_seconds(p) for p in ours), time.monotonic()
            time.sleep(0.3)
            m1, c1, w1 = machine_busy_seconds(), sum(cpu_seconds(p) for p in ours), time.monotonic()
            busy = 100 * ((m1 - m0) - (c1 - c0)) / (w1 - w0)
            if busy < threshold or time.monotonic() >= deadline:
                return
            time.sleep(0.5)

    # -- the loop ----------------------------------------------------------------------------------
    def run_case(self, case: Any) -> None:
        entities = [e for e in case.servers if case.kind == "client" or e in self.args.server_list]
        runner = {"echo": self.run_echo, "connect": self.run_connect, "memory": self.run_memory,
                  "client": self.run_client}[case.kind]
        runs = self.runs.setdefault(case.id, {e: [] for e in entities})
        print("(%s) %s: %s" % (case.scenario, case.id, case.title), flush=True)
        # Memory needs a fresh server per run and varies little: two repetitions at most.
        reps = min(self.args.reps, 2) if case.kind == "memory" else self.args.reps
        for rep in range(reps):
            for entity in entities:  # interleaved: A B C ... A B C ...
                if self.args.wait_quiet:
                    self.wait_quiet(self.args.wait_quiet)
                run = self.run_once(case, entity, runner)
                run["rep"] = rep
                runs[entity].append(run)

    def run_once(self, case: Any, entity: str, runner: Callable) -> dict[str, Any]:
        """One run; redone (at most twice, within the retry budget) if other processes took the CPU.

        Interference only ever slows a run down, so of the attempts the quietest one is kept.
        """
        attempts: list[dict[str, Any]] = []
        while True:
            started = time.monotonic()
            try:
                run = runner(case, entity)
            except Exception as exc:
                run = {"value": None, "error": "%s: %s" % (type(exc).__name__, exc)}
            spent = time.monotonic() - started
            attempts.append(run)
            noisy = run.get("foreign_cpu_pct", 0.0) > self.args.noise
            print("  %-19s %s%s  (%.1fs)" % (entity, _describe(case, run), " -- noisy, again" if noisy and
                                             len(attempts) <= 2 and self.retry_budget > spent else "", spent),
                  flush=True)
            if not noisy or len(attempts) > 2 or self.retry_budget <= spent:
                break
            self.retry_budget -= spent
            time.sleep(0.5)
        best = min(attempts, key=lambda r: (r.get("value") is None, r.get("foreign_cpu_pct", 0.0)))
        if len(attempts) > 1:
            best["attempts"] = len(attempts)
        return best


def _describe(case: Any, run: dict[str, Any]) -> str:
    from report import fmt
    if run.get("value") is None:
        return "FAILED %s" % run.get("error", "")
    text = "%s %s" % (fmt(run["value"]), case.unit)
    if "p50" in run:
        text += ", p50 %s us, p99 %s us" % (fmt(run["p50"]), fmt(run["p99"]))
    if "server_cpu_pct" in run:
        text += ", server CPU %.0f%%" % run["server_cpu_pct"]
    if "gen_cpu_pct" in run:
        text += ", generator CPU %.0f%%" % run["gen_cpu_pct"]
    if "client_cpu_pct" in run:
        text += ", client CPU %.0f%%" % run["client_cpu_pct"]
    if "rss_before_kib" in run:
        text += " (VmRSS %d -> %d KiB)" % (run["rss_before_kib"], run["rss_after_kib"])
    if run.get("foreign_cpu_pct", 0) >= 10:
        text += ", OTHER PROCESSES %.0f%%" % run["foreign_cpu_pct"]
    for key in ("failed", "unclean_closes"):
        if run.get(key):
            text += ", %s %d" % (key.replace("_", " "), run[key])
    return text


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def _versions() -> dict[str, str]:
    from importlib import metadata
    versions = {"python": platform.python_version()}
    for dist in ("websockets", "aiohttp", "websocket-client"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    try:
        import websockets.speedups  # noqa: F401
        versions["websockets.speedups"] = "yes"
    except ImportError:
        versions["websockets.speedups"] = "no"
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "twspy"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        versions["twspy"] = rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        versions["twspy"] = "?"
    sys.path.insert(0, ROOT)
    try:
        import twspy
        versions["twspy.DeflateMessage"] = "yes" if hasattr(twspy, "DeflateMessage") else "missing"
        # The server processes inherit this environment: TWSPY_NO_SPEEDUPS=1 measures the fallback.
        versions["twspy.speedups"] = ("on" if getattr(twspy, "speedups_enabled", lambda: False)()
                                      else "off (TWSPY_NO_SPEEDUPS)" if os.environ.get("TWSPY_NO_SPEEDUPS")
                                      else "off (not built: make build)")
    finally:
        sys.path.remove(ROOT)
    return versions


def main(argv: list[str]) -> int:
    bootstrap.ensure_venv([os.path.abspath(__file__)] + argv)
    args = parse_args(argv)
    from cases import build_cases
    from procs import raise_nofile
    from report import generator_check, generator_text, summarize, tables

    started = time.monotonic()
    nofile = raise_nofile()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("signal %d" % signum)  # unwinds through the finally blocks that stop processes

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    cases = build_cases(args.quick, args.scenarios, args.duration, args.idle_conns)
    versions = _versions()
    bench = Bench(args)
    print("twspy bench: %d cases x %d reps; %s; RLIMIT_NOFILE %d" % (
        len(cases), args.reps, bench.pinning.describe(), nofile[0]), flush=True)
    print("versions: " + ", ".join("%s %s" % kv for kv in versions.items()), flush=True)
    skipped = []
    interrupted = False
    try:
        for case in cases:
            if case.deflate and versions.get("twspy.DeflateMessage") != "yes":
                skipped.append("%s: twspy has no permessage-deflate yet (twspy.DeflateMessage missing); "
                               "twspy skipped on that row" % case.id)
                case.servers = tuple(s for s in case.servers if s != "twspy")
            bench.run_case(case)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting what was measured", flush=True)
    finally:
        bench.stop_servers()

    summaries: dict[str, dict[str, Any]] = {}
    for case in cases:
        runs = bench.runs.get(case.id)
        if not runs:
            continue
        summaries[case.id] = summarize(case, runs)
        if case.latency:
            for q in ("p50", "p99"):
                summaries["%s:%s" % (case.id, q)] = summarize(case, runs, q, higher_is_better=False)
    check = generator_check(cases, bench.runs)
    elapsed = time.monotonic() - started
    foreign = sorted(r["foreign_cpu_pct"] for runs in bench.runs.values() for rs in runs.values() for r in rs
                     if r.get("foreign_cpu_pct") is not None)
    load = {"median_pct": foreign[len(foreign) // 2], "max_pct": foreign[-1],
            "noisy_runs_kept": sum(1 for f in foreign if f > args.noise),
            "runs_redone": sum(1 for runs in bench.runs.values() for rs in runs.values() for r in rs
                               if r.get("attempts"))} if foreign else None

    print()
    print(tables(cases, summaries))
    for note in skipped:
        print("note: " + note)
    print()
    print(generator_text(check))
    print("\nmachine: %s, %d CPUs; %s; %.0f s" % (platform.platform(), os.cpu_count() or 0,
                                                  bench.pinning.describe(), elapsed))
    if load:
        print("other processes during the kept runs: median %.0f%%, max %.0f%% of one core; %d runs redone, "
              "%d kept above %.0f%%%s" % (
                  load["median_pct"], load["max_pct"], load["runs_redone"], load["noisy_runs_kept"], args.noise,
                  "" if load["noisy_runs_kept"] <= len(foreign) // 10 else
                  " -- WARNING: the machine was busy, numbers are noisy; rerun on a quiet machine "
                  "(or with --wait-quiet 30 --retry-budget 300)"))
    logs = [(name, sum(1 for _ in open(os.path.join(bench.log_dir, name), errors="replace")))
            for name in sorted(os.listdir(bench.log_dir)) if name.endswith(".log")]
    logs = [(name, n) for name, n in logs if n]
    if logs:
        print("server stderr: " + ", ".join("%s %d lines" % item for item in logs) +
              " (in %s)" % os.path.relpath(bench.log_dir))

    document = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": argv, "quick": args.quick, "reps": args.reps, "elapsed_s": round(elapsed, 1),
        "interrupted": interrupted,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "pinning": bench.pinning.describe()},
        "versions": versions, "notes": skipped, "other_processes_cpu": load,
        "cases": [dict(case.to_json(), summary=summaries.get(case.id),
                       latency_summary={q: summaries.get("%s:%s" % (case.id, q)) for q in ("p50", "p99")}
                       if case.latency else None,
                       runs=bench.runs.get(case.id)) for case in cases],
        "generator_check": check,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(document, f, indent=1, default=str)
    print("results: %s" % os.path.relpath(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
