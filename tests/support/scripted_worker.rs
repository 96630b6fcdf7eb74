//! A worker backend that plays a script instead of running anything, stamped with a manual
//! clock, so two runs of the same script give the same answers at the same times.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use taskrunner::clock::ManualClock;
use taskrunner::ports::{
    Clock, LogTail, Outcome, PortError, TaskEnd, TaskPhase, TerminateReason, WorkerBackend,
    WorkerHandle, WorkerStatus, WorkerSummary,
};
use taskrunner::task::{TaskId, TaskSpec};

/// What the worker does.
#[derive(Clone, Debug)]
pub struct Script {
    /// `Some(cause)`: `start` fails permanently with this cause.
    pub start_error: Option<String>,
    /// How many status reads answer "running" before the task ends.
    pub running_polls: u32,
    /// The exit code the task ends with; `None`: it never ends.
    pub exit_code: Option<i32>,
    /// The log the task leaves.
    pub log: String,
}

/// The worker playing a [`Script`], recording every call.
pub struct ScriptedWorker {
    script: Script,
    clock: Arc<ManualClock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    started_at: Option<DateTime<Utc>>,
    status_reads: u32,
    finished_at: Option<DateTime<Utc>>,
    calls: Vec<String>,
}

impl ScriptedWorker {
    /// A worker playing `script` on `clock`.
    pub fn new(script: Script, clock: Arc<ManualClock>) -> Self {
        Self {
            script,
            clock,
            state: Mutex::default(),
        }
    }

    /// The calls so far: `start`, `status`, `log_tail`, `terminate:<reason>`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
}

#[async_trait]
impl WorkerBackend for ScriptedWorker {
    async fn start(&self, spec: &TaskSpec) -> Result<WorkerHandle, PortError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push("start".into());
        if let Some(cause) = &self.script.start_error {
            return Err(PortError::Permanent(cause.clone()));
        }
        state.started_at.get_or_insert(self.clock.now());
        Ok(self.handle_for(&spec.task_id))
    }

    async fn status(&self, _: &WorkerHandle) -> Result<WorkerStatus, PortError> {
        let now = self.clock.now();
        let mut state = self.state.lock().unwrap();
        state.calls.push("status".into());
        state.status_reads += 1;
        let started_at = state.started_at.unwrap_or(now);
        let task = match self.script.exit_code {
            Some(code) if state.status_reads > self.script.running_polls => {
                let finished_at = *state.finished_at.get_or_insert(now);
                TaskPhase::Ended(TaskEnd {
                    outcome: if code == 0 {
                        Outcome::Succeeded
                    } else {
                        Outcome::Failed
                    },
                    exit_code: Some(code),
                    reason: None,
                    started_at: Some(started_at),
                    finished_at,
                })
            }
            _ => TaskPhase::Running { started_at },
        };
        Ok(WorkerStatus {
            task,
            worker_alive: true,
        })
    }

    async fn log_tail(&self, _: &WorkerHandle, max_bytes: usize) -> Result<LogTail, PortError> {
        self.state.lock().unwrap().calls.push("log_tail".into());
        let log = &self.script.log;
        let from = log.len().saturating_sub(max_bytes);
        Ok(LogTail {
            text: log[from..].to_owned(),
            truncated: from > 0,
        })
    }

    async fn terminate(&self, _: &WorkerHandle, reason: TerminateReason) -> Result<(), PortError> {
        self.state
            .lock()
            .unwrap()
            .calls
            .push(format!("terminate:{reason:?}"));
        Ok(())
    }

    fn handle_for(&self, task_id: &TaskId) -> WorkerHandle {
        WorkerHandle {
            backend: "scripted".into(),
            id: task_id.to_string(),
        }
    }

    async fn list(&self) -> Result<Vec<WorkerSummary>, PortError> {
        Ok(Vec::new())
    }
}
