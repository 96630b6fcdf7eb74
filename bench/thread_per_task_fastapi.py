#!/usr/bin/env python3
"""The original task-runner app's design on its own stack, for comparison: FastAPI served by
uvicorn, a pydantic request model, one thread per accepted task running the task file as a
subprocess, and the callback POSTed with requests. Nothing is persisted. 127.0.0.1 only.

    thread_per_task_fastapi.py PORT_FILE TASKS_DIR API_KEY

writes its port to PORT_FILE and serves `POST /task-runner` until SIGTERM. Needs fastapi,
uvicorn and requests (`bench/throughput.sh` installs them in a virtual environment).
"""

import os
import socket
import subprocess
import sys
import threading
from typing import Optional

import requests
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel


class WorkerConfig(BaseModel):
    worker_size: Optional[str] = None
    env_variables: Optional[dict] = None


class TaskRunnerRequest(BaseModel):
    task_id: str
    task_file_name: str
    worker_config: WorkerConfig = WorkerConfig()
    callback_url: Optional[str] = None
    callback_url_token: Optional[str] = None
    terminate_on_completion: bool = True


class TaskRunnerResponse(BaseModel):
    success: bool
    message: str


def run_task(tasks_dir, request):
    task_file = os.path.join(tasks_dir, request.task_file_name)
    env = dict(os.environ, **(request.worker_config.env_variables or {}))
    # As taskrunner runs them (and bench/thread_per_task.py): python3 for .py, else bash.
    interpreter = "python3" if task_file.endswith(".py") else "bash"
    done = subprocess.run([interpreter, task_file], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, cwd=tasks_dir)
    success = done.returncode == 0
    if request.callback_url:
        headers = {"content-type": "application/json"}
        if request.callback_url_token:
            headers["authorization"] = f"Bearer {request.callback_url_token}"
        payload = {
            "task_name": request.task_file_name,
            "task_id": request.task_id,
            "success": success,
            "status": "succeeded" if success else "failed",
            "logs": done.stdout.decode(errors="replace"),
        }
        try:
            requests.post(request.callback_url, json=payload, headers=headers, timeout=30)
        except requests.RequestException as err:
            print(f"callback for {request.task_id} failed: {err}", file=sys.stderr)


def make_app(tasks_dir, api_key):
    app = FastAPI()

    @app.post("/task-runner")
    async def task_runner(payload: TaskRunnerRequest,
                          authorization: Optional[str] = Header(None)) -> TaskRunnerResponse:
        if authorization != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="missing or wrong bearer key")
        thread = threading.Thread(target=run_task, args=[tasks_dir, payload], daemon=True)
        thread.start()
        return TaskRunnerResponse(success=True, message="Started Task successfully")

    return app


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: thread_per_task_fastapi.py PORT_FILE TASKS_DIR API_KEY")
    port_file, tasks_dir, api_key = sys.argv[1:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    with open(port_file + ".tmp", "w") as f:
        f.write(f"{listener.getsockname()[1]}\n")
    os.replace(port_file + ".tmp", port_file)
    app = make_app(os.path.abspath(tasks_dir), api_key)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])


if __name__ == "__main__":
    main()
