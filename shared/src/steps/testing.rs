//! Fakes for the steps' tests: a worker backend driven by the test, a loopback receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use crate::adapters::memory::{MemorySecretStore, MemoryTaskTokens};
use crate::callback::{CallbackPolicy, CallbackSender};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::ports::{
    DeliveryRecord, LogTail, PortError, TaskPhase, TerminateReason, WorkerBackend, WorkerHandle,
    WorkerStatus, WorkerSummary,
};
use crate::task::{TaskFile, TaskId, TaskSpec, WorkerResources};

use super::Steps;

/// A worker whose phase the test sets, recording every call.
#[derive(Default)]
pub struct FakeWorker {
    pub phase: Mutex<Option<TaskPhase>>,
    pub calls: Mutex<Vec<String>>,
    pub log: Mutex<String>,
    pub workers: Mutex<Vec<WorkerSummary>>,
    pub delivery: Mutex<Option<DeliveryRecord>>,
}

impl FakeWorker {
    pub fn set(&self, phase: TaskPhase) {
        *self.phase.lock().unwrap() = Some(phase);
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl WorkerBackend for FakeWorker {
    async fn start(&self, spec: &TaskSpec) -> Result<WorkerHandle, PortError> {
        self.calls.lock().unwrap().push("start".into());
        Ok(self.handle_for(&spec.task_id))
    }
    async fn status(&self, _: &WorkerHandle) -> Result<WorkerStatus, PortError> {
        self.calls.lock().unwrap().push("status".into());
        Ok(WorkerStatus {
            task: self
                .phase
                .lock()
                .unwrap()
                .clone()
                .unwrap_or(TaskPhase::Pending),
            worker_alive: true,
        })
    }
    async fn log_tail(&self, _: &WorkerHandle, max_bytes: usize) -> Result<LogTail, PortError> {
        let log = self.log.lock().unwrap().clone();
        let truncated = log.len() > max_bytes;
        Ok(LogTail {
            text: log[log.len().saturating_sub(max_bytes)..].to_owned(),
            truncated,
        })
    }
    async fn terminate(&self, _: &WorkerHandle, reason: TerminateReason) -> Result<(), PortError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("terminate:{reason:?}"));
        Ok(())
    }
    fn handle_for(&self, task_id: &TaskId) -> WorkerHandle {
        WorkerHandle {
            backend: "fake".into(),
            id: task_id.to_string(),
        }
    }
    async fn record_delivery(
        &self,
        _: &WorkerHandle,
        delivery: &DeliveryRecord,
    ) -> Result<(), PortError> {
        *self.delivery.lock().unwrap() = Some(delivery.clone());
        Ok(())
    }

    async fn recorded_delivery(
        &self,
        _: &WorkerHandle,
    ) -> Result<Option<DeliveryRecord>, PortError> {
        Ok(self.delivery.lock().unwrap().clone())
    }

    async fn list(&self) -> Result<Vec<WorkerSummary>, PortError> {
        Ok(self.workers.lock().unwrap().clone())
    }
}

/// Steps over fakes, a manual clock and an in-memory secret store.
pub fn steps(worker: Arc<FakeWorker>) -> (Steps, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let policy = CallbackPolicy {
        timeout: Duration::from_secs(5),
        ..CallbackPolicy::default()
    };
    let steps = Steps {
        config: Arc::new(Config::default()),
        secrets: Arc::new(MemorySecretStore::default()),
        worker,
        clock: clock.clone(),
        callbacks: Arc::new(CallbackSender::new(policy)),
        gate: None,
        children: Default::default(),
        tokens: Arc::new(MemoryTaskTokens::default()),
    };
    (steps, clock)
}

/// A task spec with defaults.
pub fn spec(task_id: &str) -> TaskSpec {
    TaskSpec {
        timeout_seconds: 3600,
        ..TaskSpec::new(
            TaskId::parse(task_id).unwrap(),
            TaskFile::parse("job.sh").unwrap(),
            WorkerResources {
                name: "X-Small".into(),
                cpus: 1,
                memory_mib: 1024,
            },
        )
    }
}
