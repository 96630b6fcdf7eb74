//! The state machine on an interpreter we did not write: `infra/state-machine.asl.json` runs
//! on aws-local-stepfunctions (npm, `tests/asl/run.mjs`) and on our embedded engine, with the
//! same scripted worker behind the same steps, and both must end the same way: same status,
//! same output, same states entered in the same order, same callbacks, same worker calls.
//!
//! Needs `npm ci --prefix tests/asl` (Node 22 and the interpreter, from npm). Only 127.0.0.1
//! is contacted. Both runs use a manual clock starting at the same instant, so timestamps in
//! the output agree to the second: the engine's timeouts sleep on it, and the step endpoint
//! replays the Node side's (real, one-second) safety-net timeouts on it before each poll.
//!
//! The wait for the worker's end is a task token on both: the token is kept through
//! `TaskTokens` (the engine's own tokens; the endpoint's stand-in on Node), and a worker
//! whose end is heard resumes it right after the wait is armed. A case whose end is not
//! heard ends each wait at its safety net and polls.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use support::asl_harness;
use support::receiver::Receiver;
use support::scripted_worker::{Script, ScriptedWorker};
use support::step_server::{HarnessTokens, StepServer};
use taskrunner::adapters::local::tokens::LocalTaskTokens;
use taskrunner::adapters::memory::MemorySecretStore;
use taskrunner::callback::{CallbackPolicy, CallbackSender};
use taskrunner::clock::ManualClock;
use taskrunner::config::{Config, PollConfig};
use taskrunner::embedded::{STATE_MACHINE, step_handlers, substitutions};
use taskrunner::engine::{Engine, TaskFailure, TaskHandler};
use taskrunner::ports::{Orchestrator, TaskTokens};
use taskrunner::steps::{PollInput, Steps, poll_worker};
use taskrunner::task::{TaskFile, TaskId, TaskSpec, WorkerResources};

const DEFINITION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../infra/state-machine.asl.json"
);
const TASK_ID: &str = "xcheck-task";

/// One scenario: what the worker does, how the callback receiver answers, the task's
/// timeout, and whether the worker's end is heard (else only the safety net sees it).
struct Case {
    script: Script,
    receiver_plan: Vec<u16>,
    timeout_seconds: u64,
    end_heard: bool,
}

impl Case {
    fn exits(running_polls: u32, exit_code: i32) -> Self {
        Self {
            script: Script {
                start_error: None,
                running_polls,
                exit_code: Some(exit_code),
                log: "hello from the task\n".into(),
            },
            receiver_plan: Vec::new(),
            timeout_seconds: 3600,
            end_heard: true,
        }
    }
}

/// poll-worker, and the worker's end right after each wait is armed: the run the poll step
/// computes resumes the wait when the task is over, as the local worker's exit (or a
/// CodeBuild event) does.
struct EndHeard {
    step: Arc<dyn TaskHandler>,
    steps: Arc<Steps>,
    heard: bool,
}

#[async_trait]
impl TaskHandler for EndHeard {
    async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure> {
        let result = self.step.invoke(payload.clone()).await?;
        let armed = payload
            .get("input")
            .filter(|_| self.heard && payload.get("task_token").is_some())
            .and_then(|input| serde_json::from_value::<PollInput>(input.clone()).ok());
        if let Some(input) = armed {
            let task_id = input.task.task_id.to_string();
            let run = poll_worker(&self.steps, input)
                .await
                .map_err(|err| TaskFailure::new(err.error, err.cause))?;
            if run.done {
                let output = serde_json::to_value(&run).unwrap();
                self.steps.tokens.resume(&task_id, &output).await.unwrap();
            }
        }
        Ok(result)
    }
}

/// The step handlers, poll-worker wrapped in [`EndHeard`].
fn handlers(world: &World, heard: bool) -> std::collections::HashMap<String, Arc<dyn TaskHandler>> {
    let mut handlers = step_handlers(&world.steps);
    let step = handlers.remove("poll-worker").unwrap();
    let wrapped: Arc<dyn TaskHandler> = Arc::new(EndHeard {
        step,
        steps: Arc::clone(&world.steps),
        heard,
    });
    handlers.insert("poll-worker".into(), wrapped);
    handlers
}

/// How one interpreter's run ended, and what it did on the way.
#[derive(Debug, PartialEq)]
struct Run {
    status: String,
    output: Option<Value>,
    error: Option<String>,
    cause: Option<String>,
    states: Vec<String>,
    callbacks: Vec<Value>,
    worker_calls: Vec<String>,
}

/// A fresh set of steps over the case's worker, a receiver and a manual clock.
struct World {
    steps: Arc<Steps>,
    clock: Arc<ManualClock>,
    worker: Arc<ScriptedWorker>,
    receiver: Receiver,
    input: Value,
}

impl World {
    async fn new(case: &Case, tokens: Arc<dyn TaskTokens>) -> Self {
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ));
        let worker = Arc::new(ScriptedWorker::new(case.script.clone(), clock.clone()));
        let receiver = Receiver::start(case.receiver_plan.clone()).await;
        // A one-second safety net: on Node it is a real timeout.
        let config = Config {
            poll: PollConfig {
                safety_seconds: 1,
                safety_max_seconds: 1,
                ..PollConfig::default()
            },
            ..Config::default()
        };
        let steps = Arc::new(Steps {
            config: Arc::new(config),
            secrets: Arc::new(MemorySecretStore::default()),
            worker: worker.clone(),
            clock: clock.clone(),
            callbacks: Arc::new(CallbackSender::new(CallbackPolicy::default())),
            gate: None,
            children: Default::default(),
            tokens,
        });
        let input = json!({ "task": spec(&receiver.url, case.timeout_seconds) });
        Self {
            steps,
            clock,
            worker,
            receiver,
            input,
        }
    }

    fn finish(self, report: asl_harness::Report) -> Run {
        Run {
            status: report.status,
            output: report.output,
            error: report.error,
            cause: report.cause,
            states: report.states,
            callbacks: self.receiver.received().iter().map(|r| r.json()).collect(),
            worker_calls: self.worker.calls(),
        }
    }
}

/// JSON with every number as a float: JavaScript writes the number 10.0 as `10`, which
/// serde_json would otherwise tell apart from the `10.0` Rust writes.
fn same_numbers(value: Value) -> Value {
    match value {
        Value::Number(number) => number
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Number(number), Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(same_numbers).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| (key, same_numbers(value)))
                .collect(),
        ),
        other => other,
    }
}

fn spec(callback_url: &str, timeout_seconds: u64) -> TaskSpec {
    TaskSpec {
        callback_url: Some(callback_url.to_owned()),
        timeout_seconds,
        ..TaskSpec::new(
            TaskId::parse(TASK_ID).unwrap(),
            TaskFile::parse("job.sh").unwrap(),
            WorkerResources {
                name: "X-Small".into(),
                cpus: 1,
                memory_mib: 1024,
            },
        )
    }
}

/// The case on aws-local-stepfunctions, the Tasks calling the steps over loopback HTTP.
async fn on_node(case: &Case) -> Run {
    let tokens = Arc::new(HarnessTokens::default());
    let world = World::new(case, tokens.clone()).await;
    let server = StepServer::start(
        handlers(&world, case.end_heard),
        world.clock.clone(),
        tokens,
    )
    .await;
    let report =
        asl_harness::run(DEFINITION, &server.endpoint, &substitutions(), &world.input).await;
    drop(server);
    world.finish(report)
}

/// The case on the embedded engine, the Tasks calling the steps in process.
async fn on_engine(case: &Case) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(LocalTaskTokens::new(dir.path()));
    let world = World::new(case, tokens.clone()).await;
    let engine = Engine::open(
        &dir.path().join("engine.db"),
        STATE_MACHINE,
        &substitutions(),
        handlers(&world, case.end_heard),
        world.clock.clone(),
    )
    .unwrap();
    tokens.attach(&engine);
    engine.start(TASK_ID, &world.input).await.unwrap();
    engine.run_until_idle().await.unwrap();
    let view = engine.describe(TASK_ID).await.unwrap().unwrap();
    let states = engine
        .history(TASK_ID)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.event_type.ends_with("StateEntered"))
        .filter_map(|event| event.state)
        .collect();
    let report = asl_harness::Report {
        status: serde_json::to_value(view.status)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned(),
        output: view.output,
        error: view.error,
        cause: view.cause,
        states,
    };
    world.finish(report)
}

impl Run {
    /// The run with numbers compared by value (see [`same_numbers`]).
    fn comparable(&self) -> Run {
        Run {
            status: self.status.clone(),
            output: self.output.clone().map(same_numbers),
            error: self.error.clone(),
            cause: self.cause.clone(),
            states: self.states.clone(),
            callbacks: self.callbacks.iter().cloned().map(same_numbers).collect(),
            worker_calls: self.worker_calls.clone(),
        }
    }
}

/// Runs the case on both interpreters, asserts they agree, and returns the engine's run.
async fn cross_check(case: Case) -> Run {
    // Fail first, and clearly, when the Node side is not installed.
    asl_harness::node();
    let node = on_node(&case).await;
    let engine = on_engine(&case).await;
    assert_eq!(
        node.comparable(),
        engine.comparable(),
        "aws-local-stepfunctions (left) and the embedded engine (right) disagree"
    );
    engine
}

fn states(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[tokio::test]
async fn a_task_whose_end_is_heard_resumes_its_wait_on_both() {
    let run = cross_check(Case::exits(1, 0)).await;
    assert_eq!(run.status, "SUCCEEDED");
    let output = run.output.as_ref().unwrap();
    assert_eq!(output["status"], "succeeded");
    assert_eq!(output["exit_code"], 0);
    assert_eq!(output["callback"]["delivered"], true);
    assert_eq!(
        run.states,
        states(&[
            "Submit",
            "WaitForWorker",
            "IsTaskDone",
            "FinishAndCallback",
            "Done",
        ])
    );
    assert_eq!(run.callbacks.len(), 1);
    assert_eq!(run.callbacks[0]["logs"], "hello from the task\n");
}

#[tokio::test]
async fn an_end_never_heard_is_caught_by_the_safety_net_on_both() {
    let mut case = Case::exits(2, 0);
    case.end_heard = false;
    let run = cross_check(case).await;
    assert_eq!(run.status, "SUCCEEDED");
    assert_eq!(run.output.as_ref().unwrap()["status"], "succeeded");
    assert_eq!(
        run.states,
        states(&[
            "Submit",
            "WaitForWorker",
            "PollWorker",
            "IsTaskDone",
            // The next wait's arming sees the worker ended.
            "WaitForWorker",
            "IsTaskDone",
            "FinishAndCallback",
            "Done",
        ])
    );
}

#[tokio::test]
async fn a_worker_that_ended_before_its_wait_was_armed_is_not_missed_on_both() {
    let mut case = Case::exits(0, 0);
    case.end_heard = false;
    let run = cross_check(case).await;
    assert_eq!(run.output.as_ref().unwrap()["status"], "succeeded");
    assert_eq!(
        run.states,
        states(&[
            "Submit",
            "WaitForWorker",
            "IsTaskDone",
            "FinishAndCallback",
            "Done",
        ])
    );
}

#[tokio::test]
async fn a_task_that_exits_1_fails_the_task_not_the_execution() {
    let run = cross_check(Case::exits(0, 1)).await;
    assert_eq!(run.status, "SUCCEEDED");
    let output = run.output.as_ref().unwrap();
    assert_eq!(output["status"], "failed");
    assert_eq!(output["success"], false);
    assert_eq!(output["exit_code"], 1);
    assert_eq!(run.callbacks.len(), 1);
    assert_eq!(run.callbacks[0]["status"], "failed");
}

#[tokio::test]
async fn a_worker_that_cannot_start_is_caught_and_called_back() {
    let mut case = Case::exits(0, 0);
    case.script.start_error = Some("secret \"db-password\" does not exist".into());
    let run = cross_check(case).await;
    assert_eq!(run.status, "SUCCEEDED");
    assert_eq!(run.states, states(&["Submit", "FinishAndCallback", "Done"]));
    let output = run.output.as_ref().unwrap();
    assert_eq!(output["status"], "error");
    assert_eq!(output["reason"], "secret \"db-password\" does not exist");
    assert_eq!(run.callbacks.len(), 1);
    assert_eq!(run.worker_calls, ["start"]);
}

#[tokio::test]
async fn a_refused_callback_is_retried_within_the_same_state() {
    let mut case = Case::exits(1, 0);
    case.receiver_plan = vec![500];
    let run = cross_check(case).await;
    assert_eq!(run.status, "SUCCEEDED");
    assert_eq!(run.callbacks.len(), 2);
    assert_eq!(run.callbacks[0], run.callbacks[1]);
    let output = run.output.as_ref().unwrap();
    assert_eq!(output["callback"]["status_code"], 200);
    assert_eq!(
        run.states
            .iter()
            .filter(|s| *s == "FinishAndCallback")
            .count(),
        1,
        "a retry does not enter the state again: {:?}",
        run.states
    );
}

#[tokio::test]
async fn a_callback_refused_every_time_fails_the_execution() {
    let mut case = Case::exits(0, 0);
    // The first attempt and all 8 retries.
    case.receiver_plan = vec![500; 9];
    let run = cross_check(case).await;
    assert_eq!(run.status, "FAILED");
    assert_eq!(
        run.error.as_deref(),
        Some("TaskRunner.CallbackUndeliverable")
    );
    assert_eq!(run.callbacks.len(), 9);
    assert_eq!(
        run.states.last().map(String::as_str),
        Some("CallbackUndeliverable")
    );
}

#[tokio::test]
async fn a_task_past_its_timeout_is_stopped_on_both() {
    let case = Case {
        script: Script {
            start_error: None,
            running_polls: 0,
            exit_code: None,
            log: "working...\n".into(),
        },
        receiver_plan: Vec::new(),
        timeout_seconds: 3,
        end_heard: true,
    };
    let run = cross_check(case).await;
    assert_eq!(run.status, "SUCCEEDED");
    let output = run.output.as_ref().unwrap();
    assert_eq!(output["status"], "timed_out");
    assert!(
        run.worker_calls.contains(&"terminate:TimedOut".to_string()),
        "{:?}",
        run.worker_calls
    );
    assert_eq!(run.callbacks[0]["status"], "timed_out");
}
