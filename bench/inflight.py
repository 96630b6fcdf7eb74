#!/usr/bin/env python3
"""Memory of `taskrunner serve` with many tasks in flight, and time to all their callbacks.

Usage: inflight.py TASKRUNNER_BIN WORK_DIR   (run by inflight.sh; stdlib only)

Environment: BENCH_TASKS (1000), BENCH_SLEEP (30, seconds each task sleeps),
BENCH_SUBMITTERS (8 concurrent submitting connections), BENCH_WAIT_EXTRA (120, seconds
to wait for callbacks beyond the sleep), TASKRUNNER_API_KEY (the bearer key).

Starts a callback receiver and a server (its PID in WORK_DIR/serve.pid), submits the
tasks, samples /proc/PID/status of the server while they run, waits for the callbacks,
stops the server and prints a table. Talks to 127.0.0.1 only.
"""

import http.client
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from receiver import Receiver  # noqa: E402
from stats import percentile  # noqa: E402

TASKS = int(os.environ.get("BENCH_TASKS", "1000"))
SLEEP = int(os.environ.get("BENCH_SLEEP", "30"))
SUBMITTERS = int(os.environ.get("BENCH_SUBMITTERS", "8"))
WAIT_EXTRA = int(os.environ.get("BENCH_WAIT_EXTRA", "120"))
API_KEY = os.environ.get("TASKRUNNER_API_KEY", "")


def proc_status(pid):
    """VmRSS, VmHWM (KiB) and Threads of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    return values


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def worker_processes(work):
    """Worker hosts whose data dir is under `work`, and the other members of their sessions."""
    hosts, sessions = [], set()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"worker-host" in argv and any(a.startswith(work.encode() + b"/") for a in argv):
            hosts.append(pid)
            sessions.add(pid)
    members = []
    for pid in pids:
        if pid in sessions:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) in sessions:  # field 6 of stat: session id
            members.append(pid)
    return hosts, members


def measure_workers(work):
    hosts, members = worker_processes(work)

    def total(pids):
        rss = sum((proc_status(p) or {}).get("VmRSS", 0) for p in pids)
        pss = sum(pss_kib(p) for p in pids)
        return len(pids), rss, pss

    return total(hosts), total(members)


def start_server(binary, work):
    data, tasks = os.path.join(work, "data"), os.path.join(work, "tasks")
    os.makedirs(data, exist_ok=True)
    os.makedirs(tasks, exist_ok=True)
    with open(os.path.join(tasks, "sleep.sh"), "w") as f:
        f.write(f"sleep {SLEEP}\n")
    log = open(os.path.join(work, "serve.log"), "wb")
    env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--log-format", "json",
         "--data-dir", data, "--tasks-dir", tasks],
        stdout=subprocess.PIPE, stderr=log, env=env)
    with open(os.path.join(work, "serve.pid"), "w") as f:
        f.write(f"{server.pid}\n")
    ready, _, _ = select.select([server.stdout], [], [], 15)
    line = server.stdout.readline().decode() if ready else ""
    prefix = "taskrunner listening on "
    if not line.startswith(prefix):
        server.kill()
        raise SystemExit(f"serve did not start: {line!r}; see {log.name}")
    return server, line[len(prefix):].strip()


class Submitter(threading.Thread):
    def __init__(self, url, ids, callback_url, results):
        super().__init__(daemon=True)
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.ids, self.callback_url, self.results = ids, callback_url, results

    def run(self):
        connection = None
        for task_id in self.ids:
            body = json.dumps({
                "task_id": task_id,
                "task_file_name": "sleep.sh",
                "worker_config": {"worker_size": "X-Small"},
                "callback_url": self.callback_url,
            })
            sent = time.time()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
                connection.request("POST", "/task-runner", body, {
                    "Authorization": f"Bearer {API_KEY}",
                    "Content-Type": "application/json",
                })
                response = connection.getresponse()
                answer = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as err:
                status, answer = None, repr(err).encode()
                if connection is not None:
                    connection.close()
                connection = None
            self.results[task_id] = (sent, time.time(), status, answer[:300])
        if connection is not None:
            connection.close()


def main():
    binary, work = sys.argv[1], os.path.abspath(sys.argv[2])
    receiver = Receiver().start()
    server, url = start_server(binary, work)
    samples = []  # (time, VmRSS, VmHWM, Threads, fds)
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            status = proc_status(server.pid)
            if status is None:
                break
            samples.append((time.time(), status["VmRSS"], status["VmHWM"], status["Threads"],
                            open_fds(server.pid)))
            stop_sampling.wait(0.25)

    try:
        time.sleep(1)
        baseline = proc_status(server.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        run = f"inflight-{int(time.time())}"
        ids = [f"{run}-{i}" for i in range(TASKS)]
        results = {}
        threads = [Submitter(url, ids[n::SUBMITTERS], receiver.url, results)
                   for n in range(SUBMITTERS)]
        first_submit = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        submit_end = time.time()
        accepted = {i for i, r in results.items() if r[2] == 202}
        rejected = {}
        for task_id, (_, _, status, answer) in results.items():
            if status != 202:
                rejected.setdefault(status, []).append(answer)

        # Workers, measured half-way through the sleep (or right away if submitting was slow).
        middle = first_submit + SLEEP / 2
        if time.time() < middle:
            time.sleep(middle - time.time())
        (sup_n, sup_rss, sup_pss), (task_n, task_rss, task_pss) = measure_workers(work)

        deadline = submit_end + SLEEP + WAIT_EXTRA
        while time.time() < deadline:
            got = {task_id for _, task_id, _ in receiver.snapshot()}
            if accepted <= got or server.poll() is not None:
                break
            time.sleep(0.25)
        wait_end = time.time()
        stop_sampling.set()
        sampler.join(timeout=5)
        server_exit = server.poll()
        final = proc_status(server.pid)
    finally:
        stop_sampling.set()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        receiver.stop()

    # --- figures -------------------------------------------------------------------------
    records = receiver.snapshot()
    first_callback = {}
    duplicates = 0
    statuses = {}
    for received, task_id, body in records:
        if task_id in first_callback:
            duplicates += 1
            continue
        first_callback[task_id] = (received, body)
        status = body.get("status") if isinstance(body, dict) else "unparsable"
        statuses[status] = statuses.get(status, 0) + 1
    ours = [t for t in ids if t in first_callback]
    missing = sorted(accepted - set(first_callback))
    delays = []  # callback received - (202 answer + SLEEP)
    for task_id in ours:
        if task_id in accepted:
            delays.append(first_callback[task_id][0] - results[task_id][1] - SLEEP)
    last_callback = max((first_callback[t][0] for t in ours), default=None)
    latencies = [(r[1] - r[0]) * 1000 for r in results.values() if r[2] == 202]

    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    first_received = min((r[0] for r in records), default=float("inf"))
    steady = [s[1] for s in samples if submit_end <= s[0] < first_received]
    peak_hwm = max([s[2] for s in samples] + ([final["VmHWM"]] if final else []), default=0)
    peak_rss = max((s[1] for s in samples), default=0)

    print()
    print(f"{TASKS} tasks of `sleep {SLEEP}` in flight, {SUBMITTERS} concurrent submitters, "
          f"{os.cpu_count()} CPUs, over loopback")
    rows = [
        ("submitted / answered 202", f"{len(results)} / {len(accepted)}"),
        ("time to submit all", f"{submit_end - first_submit:.2f} s "
         f"({len(results) / max(submit_end - first_submit, 1e-9):.0f} submits/s)"),
        ("submit latency p50 / p99 / max",
         f"{percentile(latencies, 50):.1f} / {percentile(latencies, 99):.1f} / "
         f"{max(latencies, default=float('nan')):.1f} ms"),
        ("serve RSS idle (before submits)", mib(baseline["VmRSS"]) if baseline else "?"),
        ("serve RSS steady (all in flight, median)",
         mib(statistics.median(steady)) if steady else "no sample"),
        ("serve RSS peak (max VmRSS sample / VmHWM)", f"{mib(peak_rss)} / {mib(peak_hwm)}"),
        ("serve threads / open fds (max)",
         f"{max((s[3] for s in samples), default=0)} / {max((s[4] for s in samples), default=0)}"),
        ("worker hosts alive at mid-sleep", f"{sup_n}"),
        ("worker host RSS / PSS", f"{mib(sup_rss)} / {mib(sup_pss)}"),
        ("task processes (bash, sleep) RSS / PSS",
         f"{task_n} processes, {mib(task_rss)} / {mib(task_pss)}"),
        ("callbacks received (distinct tasks)", f"{len(ours)} of {len(accepted)} accepted"),
        ("first submit -> last callback",
         f"{last_callback - first_submit:.2f} s" if last_callback else "no callback"),
        ("callback delay past the sleep p50 / p99 / max",
         f"{percentile(delays, 50):.2f} / {percentile(delays, 99):.2f} / "
         f"{max(delays, default=float('nan')):.2f} s"),
        ("callback statuses", json.dumps(statuses, sort_keys=True)),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("  (delay = callback received - 202 answer - sleep; RSS sums count shared pages "
          "once per process, PSS shares them out)")
    if rejected:
        for status, answers in sorted(rejected.items(), key=lambda kv: str(kv[0])):
            print(f"  NOT ACCEPTED: {len(answers)} x status {status}: {answers[0]!r}")
    if missing:
        print(f"  MISSING CALLBACKS: {len(missing)} accepted task(s) had none "
              f"{wait_end - submit_end:.0f} s after the last submit, e.g. {missing[:3]}")
    if duplicates:
        print(f"  duplicate callbacks: {duplicates}")
    if server_exit is not None:
        print(f"  SERVER EXITED during the run with code {server_exit}")
    return 0 if not (missing or rejected or server_exit is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
