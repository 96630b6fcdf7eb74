#!/usr/bin/env python3
"""A Lambda Runtime API emulator on 127.0.0.1 (stdlib only), and the cold-start measurement
that bench/lambda_cold_start.sh runs with it.

The emulator serves the part of the Runtime API a runtime client uses:
  GET  /2018-06-01/runtime/invocation/next            (the next event)
  POST /2018-06-01/runtime/invocation/{id}/response   (202)
  POST /2018-06-01/runtime/invocation/{id}/error      (202)
  POST /2018-06-01/runtime/init/error                 (202; recorded as a start-up failure)

In `measure` mode it hands out no event: the first `GET .../next` of a process is the moment
its init is done (it has built its clients and asks for work, as on Lambda). The time from
spawn to that request is the cold start; the process's VmHWM (/proc/PID/status) read while
the request is held open is its peak RSS up to then. The process is then killed.

Usage (see lambda_cold_start.sh for the real call):
  runtime_api.py measure --runs 20 --target NAME CWD ENVFILE -- ARGV... [--target ...]
      [--size NAME=BYTES,ZIPBYTES ...] [--json OUT]
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"
RUN_TIMEOUT_S = 30.0  # a process that has not asked for an event by then has failed
HOLD_TIMEOUT_S = 60.0  # a held /next is dropped after this even if nobody releases it


class Run:
    """One process's start: filled in by the server thread, read by the main thread."""

    def __init__(self):
        self.pid = None
        self.t_spawn_ns = None
        self.t_next_ns = None
        self.vm_hwm_kib = None
        self.vm_rss_kib = None
        self.init_error = None
        self.seen_next = threading.Event()
        self.release = threading.Event()


class Emulator:
    """The Runtime API server. `current` is the run being measured (None: hand out events)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.current = None
        self.events = []  # (request_id, event) to hand out when not measuring
        self.results = {}
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, code, body=b"", headers=()):
                self.send_response(code)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_GET(self):
                if self.path != PREFIX + "/invocation/next":
                    self._reply(404, b'{"errorType":"NotFound"}')
                    return
                now = time.perf_counter_ns()
                with emulator.lock:
                    run = emulator.current
                    first = run is not None and run.t_next_ns is None
                    if first:
                        run.t_next_ns = now
                        run.vm_hwm_kib, run.vm_rss_kib = read_status(run.pid)
                if run is not None:
                    if first:
                        run.seen_next.set()
                    # Hold the request: no event is handed out while measuring.
                    run.release.wait(HOLD_TIMEOUT_S)
                    self.close_connection = True
                    return
                with emulator.lock:
                    item = emulator.events.pop(0) if emulator.events else None
                if item is None:
                    time.sleep(1.0)
                    self.close_connection = True
                    return
                request_id, event = item
                deadline = int(time.time() * 1000) + 900_000
                self._reply(
                    200,
                    json.dumps(event).encode(),
                    [
                        ("Content-Type", "application/json"),
                        ("Lambda-Runtime-Aws-Request-Id", request_id),
                        ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                        ("Lambda-Runtime-Invoked-Function-Arn",
                         "arn:aws:lambda:us-east-1:000000000000:function:bench"),
                        ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                    ],
                )

            def do_POST(self):
                body = self._body()
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts == ["init", "error"]:
                    with emulator.lock:
                        run = emulator.current
                        if run is not None:
                            run.init_error = body.decode(errors="replace")
                            run.seen_next.set()
                    self._reply(202, b'{"status":"OK"}')
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    with emulator.lock:
                        emulator.results[parts[1]] = (parts[2], body)
                    self._reply(202, b'{"status":"OK"}')
                else:
                    self._reply(404, b'{"errorType":"NotFound"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def read_status(pid):
    """(VmHWM, VmRSS) in KiB of a live process."""
    hwm = rss = None
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return hwm, rss


def read_env(path):
    """NAME=VALUE lines (no quoting) into a dict: the process gets exactly these."""
    env = {}
    with open(path) as lines:
        for line in lines:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value
    return env


def measure_once(emulator, target, log):
    """Spawns the target once and returns its Run (t_next_ns None: it failed)."""
    env = dict(target["env"], AWS_LAMBDA_RUNTIME_API=emulator.address)
    run = Run()
    with emulator.lock:
        emulator.current = run
    try:
        run.t_spawn_ns = time.perf_counter_ns()
        proc = subprocess.Popen(
            target["argv"], cwd=target["cwd"], env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        run.pid = proc.pid
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not run.seen_next.wait(0.02):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
    finally:
        with emulator.lock:
            emulator.current = None
        if run.pid is not None:
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        run.release.set()
    return run


def quantile(values, q):
    """Nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def parse_targets(argv):
    """Splits `--target NAME CWD ENVFILE -- ARGV...` groups off the argument list."""
    targets, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--target":
            name, cwd, envfile = argv[i + 1:i + 4]
            if argv[i + 4] != "--":
                raise SystemExit("--target NAME CWD ENVFILE -- ARGV...")
            j = i + 5
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            targets.append({"name": name, "cwd": cwd, "env": read_env(envfile), "argv": argv[i + 5:j]})
            i = j
        else:
            rest.append(argv[i])
            i += 1
    return targets, rest


def mib(n):
    return n / (1024 * 1024)


def main():
    if len(sys.argv) < 2 or sys.argv[1] != "measure":
        print(__doc__, file=sys.stderr)
        return 2
    targets, rest = parse_targets(sys.argv[2:])
    parser = argparse.ArgumentParser(prog="runtime_api.py measure")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", action="append", default=[], help="NAME=BYTES,ZIPBYTES")
    parser.add_argument("--extra-row", action="append", default=[], help="LABEL=BYTES,ZIPBYTES (sizes only)")
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--json")
    args = parser.parse_args(rest)
    if not targets or args.runs < 1:
        raise SystemExit("need at least one --target and --runs >= 1")

    sizes = {}
    for item in args.size:
        name, _, value = item.partition("=")
        sizes[name] = tuple(int(v) for v in value.split(","))

    # SIGTERM unwinds like Ctrl-C, so the process being measured is killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    emulator = Emulator()
    samples = {t["name"]: [] for t in targets}
    failed = False
    try:
        logs = {t["name"]: open(os.path.join(args.logdir, t["name"] + ".log"), "ab") for t in targets}
        # Rounds interleave the targets, so drift in machine load spreads over all of them.
        for round_no in range(args.warmup + args.runs):
            for target in targets:
                run = measure_once(emulator, target, logs[target["name"]])
                if run.t_next_ns is None:
                    why = "init error: " + run.init_error if run.init_error else \
                        "no GET /next within %.0f s, or the process exited" % RUN_TIMEOUT_S
                    print("%s failed (%s); its output: %s" % (
                        target["name"], why, os.path.join(args.logdir, target["name"] + ".log")),
                        file=sys.stderr)
                    failed = True
                    break
                if round_no >= args.warmup:
                    samples[target["name"]].append({
                        "cold_start_ms": (run.t_next_ns - run.t_spawn_ns) / 1e6,
                        "vm_hwm_kib": run.vm_hwm_kib,
                        "vm_rss_kib": run.vm_rss_kib,
                    })
            if failed:
                break
            print("round %d/%d done" % (round_no + 1, args.warmup + args.runs), file=sys.stderr)
    finally:
        emulator.close()
    if failed:
        return 1

    header = "%-28s %10s %10s %10s %13s %11s %9s" % (
        "function", "p50 ms", "p90 ms", "min ms", "peak RSS MiB", "size MiB", "zip MiB")
    print(header)
    print("-" * len(header))
    report = {}
    for target in targets:
        name = target["name"]
        times = [s["cold_start_ms"] for s in samples[name]]
        hwm = [s["vm_hwm_kib"] for s in samples[name] if s["vm_hwm_kib"] is not None]
        raw, zipped = sizes.get(name, (None, None))
        row = {
            "runs": len(times),
            "p50_ms": quantile(times, 0.5),
            "p90_ms": quantile(times, 0.9),
            "min_ms": min(times),
            "peak_rss_mib_p50": quantile(hwm, 0.5) / 1024 if hwm else None,
            "peak_rss_mib_max": max(hwm) / 1024 if hwm else None,
            "size_bytes": raw,
            "zip_bytes": zipped,
            "samples": samples[name],
        }
        report[name] = row
        print("%-28s %10.1f %10.1f %10.1f %13s %11s %9s" % (
            name, row["p50_ms"], row["p90_ms"], row["min_ms"],
            "%.1f" % row["peak_rss_mib_p50"] if hwm else "n/a",
            "%.2f" % mib(raw) if raw is not None else "n/a",
            "%.2f" % mib(zipped) if zipped is not None else "n/a"))
    for item in args.extra_row:
        label, _, value = item.partition("=")
        raw, zipped = (int(v) for v in value.split(","))
        report[label] = {"size_bytes": raw, "zip_bytes": zipped}
        print("%-28s %10s %10s %10s %13s %11.2f %9.2f" % (label, "-", "-", "-", "-", mib(raw), mib(zipped)))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
