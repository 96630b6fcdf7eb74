#!/usr/bin/env bash
# One step of a chain, run as a child task: its id is PARENT.CHILD.
echo "step ${STEP:-?} done by $TASKRUNNER_TASK_ID"
