#!/usr/bin/env bash
# A task that fails: its output and exit code reach the callback.
echo "checking the model..."
echo "model accuracy 0.41 is below the 0.80 threshold" >&2
exit 1
