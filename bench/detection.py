#!/usr/bin/env python3
"""Embedded detection latency: how long after a task's process ends its execution enters
FinishAndCallback. Submits N tasks (each sleeps 1 to 10.8 s, so its wait is armed before
it ends and the ends spread over ten seconds) from C submitters, waits for every callback,
then reads each task's end (`finished_at` of its status, stamped when the process exited),
the time its wait was
resumed (WaitForWorker's TaskSucceeded) and the time its history entered
FinishAndCallback. Prints one JSON line: p50, p99 and max in milliseconds.

    detection.py URL API_KEY PREFIX [N [C]]
"""

import datetime
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


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main():
    url, api_key, prefix = sys.argv[1:4]
    total = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    # BENCH_SPREAD=0: every task sleeps one second, so the ends come in one burst.
    spread = float(os.environ.get("BENCH_SPREAD", "1"))
    target = urllib.parse.urlparse(url)
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    receiver = Receiver().start()
    lock = threading.Lock()
    next_index = iter(range(total))

    def submitter():
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            body = json.dumps({
                "task_id": f"{prefix}-{index}",
                "task_file_name": "nap.sh",
                # 1 to 10.8 s: the ends spread over ten seconds rather than one burst.
                "worker_config": {"worker_size": "X-Small",
                                  "env_variables": {"NAP": f"{1 + (index % 50) / 5 * spread:.1f}"}},
                "callback_url": receiver.url,
            })
            conn.request("POST", "/task-runner", body=body, headers=headers)
            conn.getresponse().read()
        conn.close()

    threads = [threading.Thread(target=submitter) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 300
    while receiver.summary()["unique_tasks"] < total and time.monotonic() < deadline:
        time.sleep(0.05)
    receiver.stop()

    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)

    def get(path):
        conn.request("GET", path, headers=headers)
        return json.loads(conn.getresponse().read())

    latencies, resumed, polls = [], [], 0
    for index in range(total):
        task_id = f"{prefix}-{index}"
        status = get(f"/task-runner/{task_id}")
        events = get(f"/task-runner/{task_id}/history")["events"]
        entered = [e for e in events if e["event_type"].endswith("StateEntered")]
        polls += sum(1 for e in entered if e["state"] == "PollWorker")
        finish = next(e for e in entered if e["state"] == "FinishAndCallback")
        end = parse_time(status["finished_at"])
        latencies.append((parse_time(finish["timestamp"]) - end) * 1000)
        answers = [e for e in events if e["event_type"] == "TaskSucceeded" and e["state"] == "WaitForWorker"]
        if answers:
            resumed.append((parse_time(answers[-1]["timestamp"]) - end) * 1000)
    print(json.dumps({
        "tasks": total,
        "callbacks": receiver.summary()["unique_tasks"],
        "safety_net_polls": polls,
        "detection_p50_ms": round(percentile(latencies, 50), 1),
        "detection_p99_ms": round(percentile(latencies, 99), 1),
        "detection_max_ms": round(max(latencies), 1),
        "resumed_p50_ms": round(percentile(resumed, 50), 1) if resumed else None,
        "resumed_p99_ms": round(percentile(resumed, 99), 1) if resumed else None,
    }))


if __name__ == "__main__":
    main()
