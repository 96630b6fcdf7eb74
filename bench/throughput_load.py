#!/usr/bin/env python3
"""Submits N no-op tasks from C concurrent submitters (keep-alive connections) and waits
until every callback arrived; prints one JSON line of figures.

    throughput_load.py URL API_KEY PREFIX SERVER_PID [N [C [HOST_PID_FILE]]]

Server CPU is the server's own user+system time plus that of its reaped children, read
from /proc/PID/stat before and after; peak RSS is the server's VmHWM. With HOST_PID_FILE
(taskrunner's `<data>/worker-host.pid`), the worker host's CPU (its own and its reaped
children's, the tasks) is added to the server CPU, and its peak RSS reported apart.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from receiver import Receiver  # noqa: E402
from stats import percentile  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def host_pid(path):
    """The pid in the worker host's pid file, if that process runs."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def host_cpu(path):
    pid = host_pid(path) if path else None
    return (pid, cpu_seconds(pid)) if pid else (None, 0.0)


def main():
    url, api_key, prefix, pid = sys.argv[1:5]
    total = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    concurrency = int(sys.argv[6]) if len(sys.argv) > 6 else 16
    host_file = sys.argv[7] if len(sys.argv) > 7 else None
    target = urllib.parse.urlparse(url)
    receiver = Receiver().start()
    latencies, statuses = [], {}
    lock = threading.Lock()
    next_index = iter(range(total))

    def submitter():
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            body = json.dumps({
                "task_id": f"{prefix}-{index}",
                "task_file_name": "ok.sh",
                "worker_config": {"worker_size": "X-Small"},
                "callback_url": receiver.url,
            })
            start = time.perf_counter()
            conn.request("POST", "/task-runner", body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
        conn.close()

    cpu_before = cpu_seconds(pid)
    host_before, host_cpu_before = host_cpu(host_file)
    started = time.time()
    threads = [threading.Thread(target=submitter) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submitted = time.time()
    accepted = sum(n for code, n in statuses.items() if 200 <= code < 300)
    deadline = time.monotonic() + 300
    while receiver.summary()["unique_tasks"] < accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    records = receiver.snapshot()
    last = max((when for when, _, _ in records), default=submitted)
    summary = receiver.summary()
    host, host_cpu_after = host_cpu(host_file)
    if host != host_before:
        host_cpu_before = 0.0  # the host started during the run
    print(json.dumps({
        "tasks": total,
        "accepted": accepted,
        "answers": {str(k): v for k, v in statuses.items()},
        "callbacks": summary["callbacks"],
        "unique_callbacks": summary["unique_tasks"],
        "callback_statuses": summary["statuses"],
        "submit_seconds": round(submitted - started, 3),
        "wall_seconds": round(last - started, 3),
        "submit_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "submit_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "server_cpu_seconds": round(
            cpu_seconds(pid) - cpu_before + host_cpu_after - host_cpu_before, 2
        ),
        "peak_rss_mib": round(peak_rss_mib(pid), 1),
        "host_peak_rss_mib": round(peak_rss_mib(host), 1) if host else 0.0,
    }))
    receiver.stop()


if __name__ == "__main__":
    main()
