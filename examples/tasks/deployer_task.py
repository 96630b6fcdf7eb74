"""The original app's sample deployment task, without the platform SDK: it checks the
environment a CI caller sends and that the model directory holds files."""

import os
import sys
from pathlib import Path


def any_file_exists(dir_path: str) -> bool:
    return any(p.is_file() for p in Path(dir_path).rglob("*"))


def main() -> int:
    print("Starting model deployment task")
    for name in ("DEPLOYMENT_KEY", "PREFIX", "MODEL_NAME", "MODEL_DIR"):
        if not os.environ.get(name):
            print(f"{name} is not provided", file=sys.stderr)
            return 1
    model_dir = os.environ["MODEL_DIR"]
    if not any_file_exists(model_dir):
        print("Model directory is empty or does not exist.", file=sys.stderr)
        return 1
    print(f"Deploying {os.environ['MODEL_NAME']} from {model_dir} to {os.environ['PREFIX']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
