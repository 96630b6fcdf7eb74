#!/usr/bin/env python3
"""A callback receiver for the benchmarks (stdlib only, 127.0.0.1 only).

It answers 200 to every POST and records (receive time, task_id, body fields).
As a program: `receiver.py PORT_FILE` writes its port to PORT_FILE and serves until
SIGTERM or SIGINT; `GET /count` answers {"callbacks": N, "unique_tasks": M,
"statuses": {...}}.
"""

import http.server
import json
import os
import signal
import sys
import threading
import time


class Receiver:
    """Counts callbacks in a background thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records = []  # (wall time, task_id, body dict or None)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                now = time.time()
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                task_id = body.get("task_id") if isinstance(body, dict) else None
                with receiver.lock:
                    receiver.records.append((now, task_id, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self):
                answer = json.dumps(receiver.summary()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/cb"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def summary(self):
        records = self.snapshot()
        statuses = {}
        for _, _, body in records:
            status = body.get("status") if isinstance(body, dict) else "unparsable"
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {
            "callbacks": len(records),
            "unique_tasks": len({task_id for _, task_id, _ in records}),
            "statuses": statuses,
        }


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: receiver.py PORT_FILE")
    receiver = Receiver().start()
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{receiver.port}\n")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + 3600  # never outlive a forgotten benchmark by long
    while not stop.wait(0.5) and time.monotonic() < deadline:
        pass
    receiver.stop()


if __name__ == "__main__":
    main()
