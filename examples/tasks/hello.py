"""A task that shows what a worker gives it: its environment, its checkout, its id."""

import os
import platform
from pathlib import Path


def main() -> None:
    print(os.environ.get("GREETING", "hello"))
    print(f"task id: {os.environ['TASKRUNNER_TASK_ID']}")
    print(f"python {platform.python_version()} in {Path.cwd()}")
    print(f"ANSWER={os.environ.get('ANSWER')}")
    checkout = sorted(p.name for p in Path.cwd().iterdir())
    print(f"checkout holds: {', '.join(checkout)}")


if __name__ == "__main__":
    main()
