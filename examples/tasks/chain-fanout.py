"""A parent task that starts two child tasks at once and polls them until both end.

`taskrunner` is on the task's PATH and finds the API and this task's token by itself.
CALLBACK_URL, when set, is where each child reports its own result.
"""

import json
import os
import subprocess
import time


def taskrunner(*args):
    done = subprocess.run(["taskrunner", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


children = []
for shard in ("a", "b"):
    request = {
        "task_id": f"shard-{shard}",
        "task_file_name": "chain-step.sh",
        "worker_config": {"env_variables": {"STEP": f"shard {shard}"}},
    }
    if os.environ.get("CALLBACK_URL"):
        request["callback_url"] = os.environ["CALLBACK_URL"]
    with open(f"shard-{shard}.json", "w") as file:
        json.dump(request, file)
    children.append(taskrunner("submit", f"shard-{shard}.json")["task_id"])
    print("started", children[-1])

while True:
    statuses = [taskrunner("status", child, "--json") for child in children]
    if all(status["done"] for status in statuses):
        break
    time.sleep(1)
for status in statuses:
    print(status["task_id"], status["status"])
raise SystemExit(0 if all(status["success"] for status in statuses) else 1)
