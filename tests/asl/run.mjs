// Runs the taskrunner state machine on aws-local-stepfunctions, an ASL interpreter we did
// not write, with every Task state calling taskrunner's own steps over local HTTP.
//
// Usage:
//   node run.mjs DEFINITION ENDPOINT PLACEHOLDER=STEP... < input.json
//
// DEFINITION is infra/state-machine.asl.json. Each `${PLACEHOLDER}` in it becomes a dummy
// Lambda ARN naming STEP; a Task state calls POST ENDPOINT/invoke/STEP with the `Payload`
// its Parameters built. A 2xx JSON answer is the Lambda's result; any other answer should be
// `{"errorType", "errorMessage"}` and becomes the task's error (name = errorType), so Retry
// and Catch match on it as Step Functions matches a Lambda's error type. Wait states and
// retry pauses take no time: the caller's clock stands in for them.
//
// A `.waitForTaskToken` Task (the library has no tokens) calls its step, then waits on
// POST ENDPOINT/wait/TASK_ID, the endpoint's stand-in for SendTaskSuccess/SendTaskFailure;
// the library's own timeout ends a wait nothing answers. The library resolves
// TimeoutSecondsPath against the input after Parameters, unlike Step Functions, which
// reads the state's input: such a path is rewritten here to where that input sits in the
// Parameters (`Payload.input`), so the definition stays as AWS runs it.
//
// Prints one JSON line: {"status", "output", "error", "cause", "states"}, where `states`
// names the states entered, in order. Exits 0 whenever the execution ran to an end, even a
// failed one; non-zero only when the harness itself could not run.

import { readFileSync } from "node:fs";
import { StateMachine } from "aws-local-stepfunctions";

const FUNCTION_ARN_PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:taskrunner-";

function usage(message) {
  process.stderr.write(`run.mjs: ${message}\nusage: node run.mjs DEFINITION ENDPOINT PLACEHOLDER=STEP... < input.json\n`);
  process.exit(2);
}

const [definitionPath, endpoint, ...mappings] = process.argv.slice(2);
if (!definitionPath || !endpoint || mappings.length === 0) {
  usage("expected a definition file, an endpoint and at least one PLACEHOLDER=STEP");
}
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(endpoint)) {
  usage(`endpoint ${JSON.stringify(endpoint)}: must be http://127.0.0.1:PORT (loopback only)`);
}

// Placeholder name -> dummy ARN, and dummy ARN -> the step it stands for.
const arns = new Map();
const stepsByArn = new Map();
for (const mapping of mappings) {
  const [placeholder, step] = mapping.split("=");
  if (!placeholder || !step) usage(`${JSON.stringify(mapping)}: expected PLACEHOLDER=STEP`);
  const arn = FUNCTION_ARN_PREFIX + step;
  arns.set(placeholder, arn);
  stepsByArn.set(arn, step);
}

const text = readFileSync(definitionPath, "utf8").replace(/\$\{(\w+)\}/g, (whole, name) => {
  if (!arns.has(name)) usage(`the definition uses \${${name}}, which no PLACEHOLDER=STEP names`);
  return arns.get(name);
});
const definition = JSON.parse(text);
const waitsForToken = (state) => state.Type === "Task" && state.Resource.endsWith(".waitForTaskToken");
for (const state of Object.values(definition.States)) {
  const path = state.TimeoutSecondsPath;
  if (waitsForToken(state) && path?.startsWith("$") && state.Parameters?.Payload?.["input.$"] === "$") {
    state.TimeoutSecondsPath = "$.Payload.input" + path.slice(1);
  }
}
const input = JSON.parse(readFileSync(0, "utf8"));

/** An error as a Lambda function reports it: Retry and Catch match on `name`. */
class TaskError extends Error {
  constructor(name, message) {
    super(message);
    this.name = name;
  }
}

// aws-local-stepfunctions hands a local handler the state's effective input, i.e. the
// Parameters as evaluated: `{FunctionName, Payload}` for arn:aws:states:::lambda:invoke.
async function invokeStep(parameters) {
  const step = stepsByArn.get(parameters?.FunctionName);
  if (!step) {
    throw new TaskError("Lambda.ResourceNotFoundException", `no step for function ${JSON.stringify(parameters?.FunctionName)}`);
  }
  let response;
  try {
    response = await fetch(`${endpoint}/invoke/${step}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(parameters.Payload ?? {}),
    });
  } catch (err) {
    throw new TaskError("Lambda.SdkClientException", `POST ${endpoint}/invoke/${step}: ${err.cause?.message ?? err.message}`);
  }
  const body = await response.text();
  let answer;
  try {
    answer = JSON.parse(body);
  } catch {
    throw new TaskError("Lambda.Unknown", `POST /invoke/${step} answered ${response.status} with non-JSON: ${body.slice(0, 200)}`);
  }
  if (!response.ok) {
    throw new TaskError(answer?.errorType ?? "Lambda.Unknown", answer?.errorMessage ?? body);
  }
  // The shape Step Functions gives a lambda:invoke result; the library does not add it.
  return { ExecutedVersion: "$LATEST", Payload: answer, StatusCode: 200 };
}

// The task token's stand-in: the step is called with it, then the wait is answered (or not).
async function waitForToken(parameters) {
  await invokeStep(parameters);
  const taskId = parameters?.Payload?.input?.task?.task_id;
  let answer;
  try {
    const response = await fetch(`${endpoint}/wait/${encodeURIComponent(taskId)}`, { method: "POST" });
    answer = await response.json();
  } catch (err) {
    throw new TaskError("States.Runtime", `POST /wait/${taskId}: ${err.cause?.message ?? err.message}`);
  }
  if (answer.error) throw new TaskError(answer.error, answer.cause);
  return answer.output;
}

const taskStates = Object.entries(definition.States).filter(([, state]) => state.Type === "Task");
const waitStates = Object.entries(definition.States).filter(([, state]) => state.Type === "Wait");
const retryStates = Object.entries(definition.States).filter(([, state]) => Array.isArray(state.Retry));

const machine = new StateMachine(definition);
const execution = machine.run(input, {
  // The context object as the embedded engine gives it (Step Functions fills it in itself).
  // The task token is fixed: the endpoint keys waits by task id, as TaskTokens does.
  context: {
    StateMachine: { Id: "arn:aws:states:local:0:stateMachine:taskrunner", Name: "taskrunner" },
    Task: { Token: "harness-task-token" },
  },
  overrides: {
    taskResourceLocalHandlers: Object.fromEntries(
      taskStates.map(([name, state]) => [name, waitsForToken(state) ? waitForToken : invokeStep]),
    ),
    waitTimeOverrides: Object.fromEntries(waitStates.map(([name]) => [name, 0])),
    retryIntervalOverrides: Object.fromEntries(retryStates.map(([name]) => [name, 0])),
  },
});

const states = [];
let failure = null;
const events = (async () => {
  for await (const event of execution.eventLogs) {
    if (event.type === "StateEntered") states.push(event.state.name);
    if (event.type === "ExecutionFailed") failure = { error: event.Error, cause: event.Cause };
  }
})();

let report;
try {
  const output = await execution.result;
  await events;
  report = { status: "SUCCEEDED", output, error: null, cause: null, states };
} catch (err) {
  await events;
  if (!failure) throw err;
  const cause = typeof failure.cause === "string" ? failure.cause : (failure.cause?.message ?? null);
  report = { status: "FAILED", output: null, error: failure.error, cause, states };
}
// A wait the library timed out leaves its POST /wait open: exit rather than wait for it.
process.stdout.write(JSON.stringify(report) + "\n", () => process.exit(0));
