#!/usr/bin/env python3
"""Helpers of bench/engine_io.sh.

    engine_io.py load URL API_KEY PREFIX N   runs N no-op tasks one after another
    engine_io.py report RUN_DIR N            per-task figures from RUN_DIR/serve.trace

The report maps file descriptors to files with RUN_DIR/fds.txt (`ls -l /proc/PID/fd`),
follows `<... resumed>` lines of `strace -f`, decodes the 24-byte WAL frame headers written
to engine.db-wal (page number; a non-zero database size marks a commit) and names each
page's table or index from the database's `dbstat` table.
"""

import collections
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from receiver import Receiver  # noqa: E402

CALLS = ("pwrite64", "pread64", "fcntl", "fsync", "fdatasync")


def load(url, api_key, prefix, total):
    target = urllib.parse.urlparse(url)
    receiver = Receiver().start()
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    for index in range(total):
        body = json.dumps({
            "task_id": f"{prefix}-{index}",
            "task_file_name": "ok.sh",
            "worker_config": {"worker_size": "X-Small"},
            "callback_url": receiver.url,
        })
        conn.request("POST", "/task-runner", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 202:
            sys.exit(f"task {index}: answered {answer.status}")
        deadline = time.monotonic() + 30
        while receiver.summary()["unique_tasks"] <= index:
            if time.monotonic() > deadline:
                sys.exit(f"task {index}: no callback within 30 s")
            time.sleep(0.002)
        # The execution's last write follows its callback.
        time.sleep(0.05)
    print(json.dumps({"tasks": total, "callbacks": receiver.summary()["callbacks"]}))
    receiver.stop()


def unescape(text):
    """The bytes of a C-escaped strace string."""
    out, i = bytearray(), 0
    simple = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34}
    while i < len(text):
        if text[i] != "\\":
            out.append(ord(text[i]))
            i += 1
            continue
        j = i + 1
        if text[j] in "01234567":
            k = j
            while k < len(text) and k < j + 3 and text[k] in "01234567":
                k += 1
            out.append(int(text[j:k], 8))
            i = k
        else:
            out.append(simple.get(text[j], ord(text[j])))
            i = j + 1
    return bytes(out)


def report(run, total):
    fds = {}
    with open(os.path.join(run, "fds.txt")) as f:
        for line in f:
            m = re.search(r" (\d+) -> (.*)$", line)
            if m:
                fds[m.group(1)] = os.path.basename(m.group(2))
    calls, sizes = collections.Counter(), collections.Counter()
    threads = collections.defaultdict(collections.Counter)
    pages, commits, pending = collections.Counter(), 0, {}

    def record(pid, call, fd, result):
        name = fds.get(fd, "")
        if not name.startswith("engine.db"):
            return
        calls[(call, name)] += 1
        threads[pid][call] += 1
        if result is not None and call in ("pwrite64", "pread64"):
            sizes[(call, name)] += max(int(result), 0)

    with open(os.path.join(run, "serve.trace")) as f:
        for line in f:
            m = re.match(r"(\d+)\s+<\.\.\. (\w+) resumed>.*= (-?\d+)", line)
            if m:
                pid, _, result = m.groups()
                if pid in pending:
                    call, fd = pending.pop(pid)
                    record(pid, call, fd, result)
                continue
            m = re.match(r"(\d+)\s+(\w+)\((\d+)", line)
            if not m or m.group(2) not in CALLS:
                continue
            pid, call, fd = m.groups()
            frame = re.search(r'pwrite64\(\d+, "(.*)", 24, \d+', line)
            if frame and fds.get(fd) == "engine.db-wal":
                header = unescape(frame.group(1))
                pages[int.from_bytes(header[0:4], "big")] += 1
                commits += int.from_bytes(header[4:8], "big") != 0
            if "unfinished" in line:
                pending[pid] = (call, fd)
                continue
            result = re.search(r"= (-?\d+)", line.rsplit(")", 1)[-1])
            record(pid, call, fd, result.group(1) if result else None)

    frames = sum(pages.values())
    print(f"commits per task:    {commits / total:6.1f}")
    print(f"WAL frames per task: {frames / total:6.1f}")
    for (call, name), count in sorted(calls.items()):
        kib = sizes[(call, name)] / total / 1024
        size = f" {kib:7.1f} KiB" if call in ("pwrite64", "pread64") else ""
        print(f"{call:9} {name:14} {count / total:6.1f} per task{size}")
    # The reader thread is the one that reads but never writes.
    readers = [c for c in threads.values() if c["pread64"] and not c["pwrite64"]]
    if readers:
        print(f"reader thread pread64 per task: {sum(c['pread64'] for c in readers) / total:.1f}")
    out = subprocess.run(
        ["sqlite3", os.path.join(run, "data", "engine.db"), "SELECT pageno, name FROM dbstat"],
        capture_output=True, text=True, check=False,
    ).stdout
    owner = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    by_tree = collections.Counter()
    for page, count in pages.items():
        by_tree[owner.get(str(page), "(freed since)")] += count
    print("WAL frames per task by table or index:")
    for tree, count in by_tree.most_common():
        print(f"  {tree:34} {count / total:5.1f}")


def main():
    if sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        report(sys.argv[2], int(sys.argv[3]))


if __name__ == "__main__":
    main()
