//! State transitions and history events per task under the adaptive poll, beside a fixed
//! 30-second poll, for 1-minute, 1-hour and 36-hour tasks.
//!
//! The real state machine runs on the embedded engine with a manual clock, so 36 hours of
//! polling take milliseconds. The worker is a stand-in that reports "running" until the
//! task's duration has passed; no exit wakes the wait early, as in AWS.
//!
//! `cargo bench -p taskrunner --bench polling`

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
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
use taskrunner::steps::{Steps, step_handlers};
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

struct Figures {
    transitions: u64,
    events: u64,
    polls: u64,
    real: Duration,
}

async fn measure(duration: Duration, poll: PollConfig) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let worker = Arc::new(TimedWorker {
        clock: clock.clone(),
        started: Default::default(),
        duration,
    });
    let config = Config {
        poll,
        max_timeout_seconds: 40 * 3600,
        ..Config::default()
    };
    let steps = Arc::new(Steps {
        config: Arc::new(config),
        secrets: Arc::new(MemorySecretStore::default()),
        worker,
        clock: clock.clone(),
        callbacks: Arc::new(CallbackSender::new(CallbackPolicy::default()).unwrap()),
        gate: None,
        children: Default::default(),
        tokens: Arc::new(taskrunner::adapters::memory::MemoryTaskTokens::default()),
    });
    let engine = Engine::open(
        &dir.path().join("engine.db"),
        STATE_MACHINE,
        &substitutions(),
        step_handlers(&steps),
        clock.clone(),
    )
    .unwrap();
    let started = Instant::now();
    engine
        .start("bench", &json!({ "task": spec() }))
        .await
        .unwrap();
    engine.run_until_idle().await.unwrap();
    let real = started.elapsed();
    let view = engine.describe("bench").await.unwrap().unwrap();
    let polls = engine
        .history("bench")
        .await
        .unwrap()
        .iter()
        .filter(|event| {
            event.event_type == "TaskStateEntered" && event.state.as_deref() == Some("PollWorker")
        })
        .count() as u64;
    Figures {
        transitions: view.transitions,
        events: view.history_events,
        polls,
        real,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let adaptive = PollConfig::default();
    let fixed = PollConfig {
        min_seconds: 30,
        max_seconds: 30,
        fraction: 0.0,
        ..PollConfig::default()
    };
    println!(
        "{:<10} {:<22} {:>7} {:>12} {:>15} {:>14} {:>10}",
        "task", "poll", "polls", "transitions", "history events", "cost/1k tasks", "real time"
    );
    for (label, seconds) in [
        ("1 minute", 60u64),
        ("1 hour", 3600),
        ("36 hours", 36 * 3600),
    ] {
        for (name, poll) in [
            ("adaptive (1/10, 5-300s)", adaptive.clone()),
            ("fixed 30 s", fixed.clone()),
        ] {
            let figures = measure(Duration::from_secs(seconds), poll).await;
            // Step Functions Standard: $0.025 per 1,000 state transitions.
            let cost = figures.transitions as f64 * 0.025;
            println!(
                "{label:<10} {name:<22} {:>7} {:>12} {:>15} {:>13.2}$ {:>8.0}ms",
                figures.polls,
                figures.transitions,
                figures.events,
                cost,
                figures.real.as_secs_f64() * 1000.0
            );
        }
    }
    println!("(Step Functions' history limit is 25,000 events per execution.)");
}
