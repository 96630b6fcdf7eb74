"""A Python stand-in for taskrunner's Lambda functions, for the cold-start comparison in
bench/lambda_cold_start.sh.

It does at init what a usual Python Lambda of this kind does, and what the Rust functions do
in `taskrunner::lambda::AwsStack::new`: read the same settings from the environment and
build the AWS clients once (Secrets Manager, Step Functions, CodeBuild, CloudWatch Logs).
No client makes a call before the first event. The handler itself is a stub: the benchmark
measures start-up only and never hands it an event.
"""

import json
import os

import boto3

SECRET_PREFIX = os.environ.get("TASKRUNNER_SECRET_PREFIX") or "taskrunner/"
STATE_MACHINE_ARN = os.environ.get("TASKRUNNER_STATE_MACHINE_ARN")
CODEBUILD_PROJECT = os.environ["TASKRUNNER_CODEBUILD_PROJECT"]
CODEBUILD_LOG_GROUP = os.environ["TASKRUNNER_CODEBUILD_LOG_GROUP"]

secrets = boto3.client("secretsmanager")
stepfunctions = boto3.client("stepfunctions")
codebuild = boto3.client("codebuild")
logs = boto3.client("logs")


def handler(event, context):
    """Answers with what it was given and which clients it holds (no AWS call)."""
    return {
        "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
        "event": json.loads(json.dumps(event)),
        "clients": [c.meta.service_model.service_name for c in (secrets, stepfunctions, codebuild, logs)],
        "state_machine": STATE_MACHINE_ARN,
        "project": CODEBUILD_PROJECT,
    }
