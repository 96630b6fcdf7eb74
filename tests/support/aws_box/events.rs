//! EventBridge's part in the box (moto's EventBridge delivers no CodeBuild events to Lambda):
//! the CodeBuild stand-in hands every event a build emits to [`EventBus::emit`], which
//! matches it against the rule's pattern as `template.yaml` declares it (with moto's own
//! pattern matcher) and invokes the `worker-events` function with the events that match, as
//! an asynchronous invocation: an error is retried twice, as Lambda does for EventBridge.
//! A task can be marked dropped: its events are not delivered, as if the rule were disabled.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::lambda::{Answer, Function};

/// The function the rule targets, and the rule's name in the template.
pub const FUNCTION: &str = "worker-events";
const RULE: &str = "WorkerEnded";

/// One event the rule delivered, and what the function answered.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event's `detail-type`.
    pub detail_type: String,
    /// The task its build runs.
    pub task_id: String,
    /// When it was emitted.
    pub emitted: Instant,
    /// The function's answer (its result or error document).
    pub answer: Value,
}

/// The rule and its target.
pub struct EventBus {
    matcher: tokio::sync::Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _matcher: Child,
    function: Arc<Function>,
    dropped: Mutex<HashSet<String>>,
    deliveries: Mutex<Vec<Delivery>>,
    emitted: Mutex<usize>,
}

impl EventBus {
    /// The rule of `template.yaml` (its `!Ref WorkerProject` resolved to `project`) in
    /// front of `function`.
    pub fn start(template: PathBuf, project: &str, function: Arc<Function>) -> Arc<Self> {
        let refs = serde_json::json!({"WorkerProject": project}).to_string();
        let mut matcher = tokio::process::Command::new("python3")
            .arg(super::template_script())
            .args(["match-events"])
            .arg(template)
            .args([FUNCTION, RULE, &refs])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 tests/support/template.py match-events");
        let stdin = matcher.stdin.take().unwrap();
        let stdout = BufReader::new(matcher.stdout.take().unwrap());
        Arc::new(Self {
            matcher: tokio::sync::Mutex::new((stdin, stdout)),
            _matcher: matcher,
            function,
            dropped: Mutex::new(HashSet::new()),
            deliveries: Mutex::new(Vec::new()),
            emitted: Mutex::new(0),
        })
    }

    /// Drops every event of `task_id`'s builds from now on (the rule "disabled" for it).
    pub fn drop_events_of(&self, task_id: &str) {
        self.dropped.lock().unwrap().insert(task_id.to_owned());
    }

    /// Whether the rule's pattern matches `event`.
    async fn matches(&self, event: &Value) -> bool {
        let mut matcher = self.matcher.lock().await;
        let (stdin, stdout) = &mut *matcher;
        let line = format!("{event}\n");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).await.unwrap();
        match answer.trim() {
            "true" => true,
            "false" => false,
            other => panic!("the pattern matcher answered {other:?}"),
        }
    }

    /// Emits `event` from the build of `task_id` (`None`: the build names no task). Delivery
    /// is asynchronous, as EventBridge's is.
    pub fn emit(self: &Arc<Self>, task_id: Option<&str>, event: Value) {
        *self.emitted.lock().unwrap() += 1;
        let bus = Arc::clone(self);
        let task_id = task_id.unwrap_or_default().to_owned();
        let emitted = Instant::now();
        tokio::spawn(async move {
            if !bus.matches(&event).await || bus.dropped.lock().unwrap().contains(&task_id) {
                return;
            }
            let body = Bytes::from(event.to_string());
            let mut answer = Value::Null;
            // An asynchronous invocation: the first try and two retries.
            for _ in 0..3 {
                match bus.function.invoke(body.clone()).await {
                    Answer::Response(bytes) => {
                        answer = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        break;
                    }
                    Answer::Error(bytes) => {
                        answer = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    }
                }
            }
            bus.deliveries.lock().unwrap().push(Delivery {
                detail_type: event["detail-type"].as_str().unwrap_or_default().to_owned(),
                task_id,
                emitted,
                answer,
            });
        });
    }

    /// Every event delivered so far, with the function's answer.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// How many events the builds emitted, matching or not.
    pub fn emitted(&self) -> usize {
        *self.emitted.lock().unwrap()
    }
}
