//! The state machine on an interpreter we did not write: `infra/state-machine.asl.json` runs
//! on aws-local-stepfunctions (npm, `tests/asl/run.mjs`) and on our embedded engine, with the
//! same scripted worker behind the same steps, and both must end the same way: same status,
//! same output, same states entered in the same order, same callbacks, same worker calls.
//!
//! Needs `npm ci --prefix tests/asl` (Node 22 and the interpreter, from npm). Only 127.0.0.1
//! is contacted. Both runs use a manual clock starting at the same instant, so timestamps in
//! the output agree to the second: the engine's Waits sleep on it, and the step endpoint
//! replays the Node side's skipped Waits on it before each poll.

mod support;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use support::asl_harness;
use support::receiver::Receiver;
use support::scripted_worker::{Script, ScriptedWorker};
use support::step_server::StepServer;
use taskrunner::adapters::memory::MemorySecretStore;
use taskrunner::callback::{CallbackPolicy, CallbackSender};
use taskrunner::clock::ManualClock;
use taskrunner::config::Config;
use taskrunner::embedded::{STATE_MACHINE, step_handlers, substitutions};
use taskrunner::engine::Engine;
use taskrunner::ports::Orchestrator;
use taskrunner::steps::Steps;
use taskrunner::task::{TaskFile, TaskId, TaskSpec, WorkerResources};

const DEFINITION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../infra/state-machine.asl.json"
);
const TASK_ID: &str = "xcheck-task";

/// One scenario: what the worker does, how the callback receiver answers, the task's timeout.
struct Case {
    script: Script,
    receiver_plan: Vec<u16>,
    timeout_seconds: u64,
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
        }
    }
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
    async fn new(case: &Case) -> Self {
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ));
        let worker = Arc::new(ScriptedWorker::new(case.script.clone(), clock.clone()));
        let receiver = Receiver::start(case.receiver_plan.clone()).await;
        let steps = Arc::new(Steps {
            config: Arc::new(Config::default()),
            secrets: Arc::new(MemorySecretStore::default()),
            worker: worker.clone(),
            clock: clock.clone(),
            callbacks: Arc::new(CallbackSender::new(CallbackPolicy::default())),
            gate: None,
            children: Default::default(),
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
    let world = World::new(case).await;
    let server = StepServer::start(step_handlers(&world.steps), world.clock.clone()).await;
    let report =
        asl_harness::run(DEFINITION, &server.endpoint, &substitutions(), &world.input).await;
    drop(server);
    world.finish(report)
}

/// The case on the embedded engine, the Tasks calling the steps in process.
async fn on_engine(case: &Case) -> Run {
    let world = World::new(case).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        &dir.path().join("engine.db"),
        STATE_MACHINE,
        &substitutions(),
        step_handlers(&world.steps),
        world.clock.clone(),
    )
    .unwrap();
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
async fn a_task_that_exits_0_succeeds_on_both() {
    let run = cross_check(Case::exits(2, 0)).await;
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
            "PollWorker",
            "IsTaskDone",
            "WaitForWorker",
            "PollWorker",
            "IsTaskDone",
            "WaitForWorker",
            "PollWorker",
            "IsTaskDone",
            "FinishAndCallback",
            "Done",
        ])
    );
    assert_eq!(run.callbacks.len(), 1);
    assert_eq!(run.callbacks[0]["logs"], "hello from the task\n");
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
        timeout_seconds: 30,
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
