//! State transitions, history events and cost per task of the task-token wait (the worker's
//! end resumes the execution; a safety net of 30 to 60 minutes polls when no end is heard),
//! beside the previous design's poll loops (a Wait state and PollWorker: a fixed 30-second
//! poll, and the adaptive poll of a tenth of the task's age, 5 to 300 s), for 1-minute,
//! 1-hour and 36-hour tasks; and a lost end (never heard: only the safety net sees it),
//! with the delay from the worker's end to FinishAndCallback.
//!
//! The real state machine runs on the embedded engine with a manual clock, so 36 hours
//! take milliseconds. The worker is a stand-in that reports "running" until the task's
//! duration has passed; its end, when heard, resumes the wait at that instant (the clock
//! stops there on its way to the next deadline). The poll loops run a variant of the same
//! file whose WaitForWorker is the previous design's Wait state.
//!
//! `cargo bench -p taskrunner --bench polling`

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use taskrunner::adapters::local::tokens::LocalTaskTokens;
use taskrunner::adapters::memory::MemorySecretStore;
use taskrunner::callback::{CallbackPolicy, CallbackSender};
use taskrunner::clock::ManualClock;
use taskrunner::config::{Config, PollConfig};
use taskrunner::embedded::{STATE_MACHINE, substitutions};
use taskrunner::engine::Engine;
use taskrunner::ports::{
    Clock, LogTail, Orchestrator, Outcome, PortError, TaskEnd, TaskPhase, TerminateReason,
    WorkerBackend, WorkerHandle, WorkerStatus, WorkerSummary,
};
use taskrunner::steps::{PollInput, Steps, poll_worker, step_handlers};
use taskrunner::task::{TaskFile, TaskId, TaskSpec, WorkerResources};

/// A worker whose task runs for a fixed time on the manual clock.
struct TimedWorker {
    clock: Arc<ManualClock>,
    started: std::sync::Mutex<Option<DateTime<Utc>>>,
    duration: Duration,
}

#[async_trait]
impl WorkerBackend for TimedWorker {
    async fn start(&self, spec: &TaskSpec) -> Result<WorkerHandle, PortError> {
        *self.started.lock().unwrap() = Some(self.clock.now());
        Ok(self.handle_for(&spec.task_id))
    }
    async fn status(&self, _: &WorkerHandle) -> Result<WorkerStatus, PortError> {
        let started = self
            .started
            .lock()
            .unwrap()
            .unwrap_or_else(|| self.clock.now());
        let end = started + chrono::Duration::from_std(self.duration).unwrap();
        let task = if self.clock.now() >= end {
            TaskPhase::Ended(TaskEnd {
                outcome: Outcome::Succeeded,
                exit_code: Some(0),
                reason: None,
                started_at: Some(started),
                finished_at: end,
            })
        } else {
            TaskPhase::Running {
                started_at: started,
            }
        };
        Ok(WorkerStatus {
            task,
            worker_alive: true,
        })
    }
    async fn log_tail(&self, _: &WorkerHandle, _: usize) -> Result<LogTail, PortError> {
        Ok(LogTail {
            text: String::new(),
            truncated: false,
        })
    }
    async fn terminate(&self, _: &WorkerHandle, _: TerminateReason) -> Result<(), PortError> {
        Ok(())
    }
    fn handle_for(&self, task_id: &TaskId) -> WorkerHandle {
        WorkerHandle {
            backend: "timed".into(),
            id: task_id.to_string(),
        }
    }
    async fn list(&self) -> Result<Vec<WorkerSummary>, PortError> {
        Ok(Vec::new())
    }
}

fn spec() -> TaskSpec {
    TaskSpec {
        timeout_seconds: 40 * 3600,
        ..TaskSpec::new(
            TaskId::parse("bench").unwrap(),
            TaskFile::parse("job.sh").unwrap(),
            WorkerResources {
                name: "X-Small".into(),
                cpus: 1,
                memory_mib: 1024,
            },
        )
    }
}

/// A manual clock that stops at the worker's end on its way to a later deadline and, when
/// the end is heard, resumes the waiting execution there, as the local worker's exit does.
struct BenchClock {
    clock: Arc<ManualClock>,
    /// The worker's end, until it has been passed.
    end: Mutex<Option<DateTime<Utc>>>,
    heard: bool,
    parts: OnceLock<(Weak<Steps>, Weak<Engine>)>,
}

impl BenchClock {
    /// The end of the task, heard: the poll step's run resumes the wait.
    async fn end_heard(&self) {
        let Some((Some(steps), Some(engine))) =
            self.parts.get().map(|(s, e)| (s.upgrade(), e.upgrade()))
        else {
            return;
        };
        let view = engine.describe("bench").await.unwrap().unwrap();
        let Some(input) = view
            .state_input
            .and_then(|input| serde_json::from_value::<PollInput>(input).ok())
        else {
            return;
        };
        let run = poll_worker(&steps, input).await.unwrap();
        if run.done {
            let output = serde_json::to_value(&run).unwrap();
            let _ = steps.tokens.resume("bench", &output).await;
        }
    }
}

#[async_trait]
impl Clock for BenchClock {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn sleep(&self, duration: Duration) {
        let target = self.now() + chrono::Duration::from_std(duration).unwrap();
        let end = {
            let mut end = self.end.lock().unwrap();
            match *end {
                Some(at) if at <= target => end.take(),
                _ => None,
            }
        };
        match end {
            Some(at) => {
                self.clock
                    .advance((at - self.now()).to_std().unwrap_or_default());
                if self.heard {
                    self.end_heard().await;
                }
            }
            None => self.clock.advance(duration),
        }
    }
}

/// How the execution waits for the worker.
#[derive(Clone)]
enum Design {
    /// The task-token wait; whether the worker's end is heard.
    TokenWait { heard: bool },
    /// The previous design: a Wait state, then PollWorker, with this poll configuration.
    PollLoop(PollConfig),
}

/// The state machine with the previous design's WaitForWorker: a Wait state of
/// `$.run.wait_seconds`, then PollWorker.
fn poll_loop_definition() -> String {
    let mut definition: Value = serde_json::from_str(STATE_MACHINE).unwrap();
    definition["States"]["WaitForWorker"] =
        json!({"Type": "Wait", "SecondsPath": "$.run.wait_seconds", "Next": "PollWorker"});
    definition.to_string()
}

struct Figures {
    transitions: u64,
    events: u64,
    polls: u64,
    /// From the worker's end to FinishAndCallback entered.
    delay: Duration,
    real: Duration,
}

async fn measure(duration: Duration, design: Design) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    // Whole seconds: the engine keeps deadlines in milliseconds.
    let manual = Arc::new(ManualClock::new(
        DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap(),
    ));
    let started_at = manual.now();
    let clock = Arc::new(BenchClock {
        clock: manual.clone(),
        end: Mutex::new(Some(
            started_at + chrono::Duration::from_std(duration).unwrap(),
        )),
        heard: matches!(design, Design::TokenWait { heard: true }),
        parts: OnceLock::new(),
    });
    let worker = Arc::new(TimedWorker {
        clock: manual.clone(),
        started: Default::default(),
        duration,
    });
    let (poll, definition) = match &design {
        Design::TokenWait { .. } => (PollConfig::default(), STATE_MACHINE.to_owned()),
        Design::PollLoop(poll) => (poll.clone(), poll_loop_definition()),
    };
    let config = Config {
        poll,
        max_timeout_seconds: 40 * 3600,
        ..Config::default()
    };
    let tokens = Arc::new(LocalTaskTokens::new(dir.path()));
    let steps = Arc::new(Steps {
        config: Arc::new(config),
        secrets: Arc::new(MemorySecretStore::default()),
        worker,
        clock: clock.clone(),
        callbacks: Arc::new(CallbackSender::new(CallbackPolicy::default())),
        gate: None,
        children: Default::default(),
        tokens: tokens.clone(),
    });
    let engine = Engine::open(
        &dir.path().join("engine.db"),
        &definition,
        &substitutions(),
        step_handlers(&steps),
        clock.clone(),
    )
    .unwrap();
    tokens.attach(&engine);
    let _ = clock
        .parts
        .set((Arc::downgrade(&steps), Arc::downgrade(&engine)));
    let started = Instant::now();
    engine
        .start("bench", &json!({ "task": spec() }))
        .await
        .unwrap();
    engine.run_until_idle().await.unwrap();
    let real = started.elapsed();
    let view = engine.describe("bench").await.unwrap().unwrap();
    let history = engine.history("bench").await.unwrap();
    let entered = |state: &str| {
        history
            .iter()
            .filter(move |event| {
                event.event_type == "TaskStateEntered" && event.state.as_deref() == Some(state)
            })
            .collect::<Vec<_>>()
    };
    let finish = entered("FinishAndCallback")[0].timestamp;
    let end = started_at + chrono::Duration::from_std(duration).unwrap();
    Figures {
        transitions: view.transitions,
        events: view.history_events,
        polls: entered("PollWorker").len() as u64,
        delay: (finish - end).to_std().unwrap_or_default(),
        real,
    }
}

fn row(label: &str, name: &str, figures: &Figures) {
    // Step Functions Standard: $0.025 per 1,000 state transitions.
    let cost = figures.transitions as f64 * 0.025;
    println!(
        "{label:<10} {name:<30} {:>6} {:>12} {:>15} {:>13.2}$ {:>11.0}s {:>8.0}ms",
        figures.polls,
        figures.transitions,
        figures.events,
        cost,
        figures.delay.as_secs_f64(),
        figures.real.as_secs_f64() * 1000.0
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let fixed = PollConfig {
        min_seconds: 30,
        max_seconds: 30,
        fraction: 0.0,
        ..PollConfig::default()
    };
    let durations = [
        ("1 minute", 60u64),
        ("1 hour", 3600),
        ("36 hours", 36 * 3600),
    ];
    println!(
        "{:<10} {:<30} {:>6} {:>12} {:>15} {:>14} {:>12} {:>10}",
        "task",
        "wait",
        "polls",
        "transitions",
        "history events",
        "cost/1k tasks",
        "end→finish",
        "real time"
    );
    for (label, seconds) in durations {
        for (name, design) in [
            ("token wait, end heard", Design::TokenWait { heard: true }),
            (
                "previous: adaptive poll",
                Design::PollLoop(PollConfig::default()),
            ),
            ("previous: fixed 30 s poll", Design::PollLoop(fixed.clone())),
        ] {
            row(
                label,
                name,
                &measure(Duration::from_secs(seconds), design).await,
            );
        }
    }
    // A minute past a safety net's deadline: the worst case is one safety net.
    for (label, seconds) in [
        ("1 minute", 60u64),
        ("61 minutes", 61 * 60),
        ("36 h 1 min", 36 * 3600 + 60),
    ] {
        let design = Design::TokenWait { heard: false };
        let figures = measure(Duration::from_secs(seconds), design).await;
        row(label, "token wait, end lost", &figures);
    }
    println!("(Step Functions' history limit is 25,000 events per execution.)");
}
