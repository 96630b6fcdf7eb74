#!/usr/bin/env python3
"""The original task-runner app's design, for comparison (stdlib only, 127.0.0.1 only).

One thread per accepted task; the thread runs the task file as a subprocess and POSTs the
result to the callback URL. Nothing is persisted: a crash loses every task in flight.
A `.py` file runs with python3 and any other with bash, as taskrunner runs them, so that
both sides of a comparison pay the same for the task itself.

    thread_per_task.py PORT_FILE TASKS_DIR API_KEY

writes its port to PORT_FILE and serves `POST /task-runner` until SIGTERM.
"""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request


def run_task(tasks_dir, request):
    task_id = request["task_id"]
    task_file = os.path.join(tasks_dir, request["task_file_name"])
    env = dict(os.environ, **(request.get("worker_config", {}).get("env_variables") or {}))
    interpreter = "python3" if task_file.endswith(".py") else "bash"
    done = subprocess.run([interpreter, task_file], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env, cwd=tasks_dir)
    success = done.returncode == 0
    body = json.dumps({
        "task_id": task_id,
        "success": success,
        "status": "succeeded" if success else "failed",
        "logs": done.stdout.decode(errors="replace"),
    }).encode()
    callback = request.get("callback_url")
    if callback:
        post = urllib.request.Request(callback, data=body, method="POST",
                                      headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(post, timeout=30).read()
        except OSError as err:
            print(f"callback for {task_id} failed: {err}", file=sys.stderr)


def make_server(tasks_dir, api_key):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as uvicorn (the original app's FastAPI server) sets it. Without it the
        # body, written after the headers, waits for the client's delayed ACK: 40 ms a request.
        disable_nagle_algorithm = True

        def answer(self, code, value):
            raw = json.dumps(value).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path != "/task-runner":
                return self.answer(404, {"error": "not found"})
            if self.headers.get("authorization") != f"Bearer {api_key}":
                return self.answer(401, {"error": "missing or wrong bearer key"})
            try:
                request = json.loads(raw)
                request["task_id"], request["task_file_name"]
            except (ValueError, KeyError, TypeError):
                return self.answer(400, {"error": "task_id and task_file_name are required"})
            threading.Thread(target=run_task, args=(tasks_dir, request), daemon=True).start()
            self.answer(202, {"task_id": request["task_id"], "status": "accepted"})

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    return Server(("127.0.0.1", 0), Handler)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: thread_per_task.py PORT_FILE TASKS_DIR API_KEY")
    port_file, tasks_dir, api_key = sys.argv[1:]
    server = make_server(os.path.abspath(tasks_dir), api_key)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    with open(port_file + ".tmp", "w") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
