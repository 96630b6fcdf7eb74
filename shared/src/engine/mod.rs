//! The embedded engine: runs `infra/state-machine.asl.json` with state kept in SQLite.
//!
//! An Amazon States Language interpreter with the semantics of Step Functions Standard
//! workflows, JSONPath only: Task, Wait, Choice, Pass, Succeed and Fail states, with
//! `Retry`, `Catch` and `TimeoutSeconds`. Every step is written to SQLite before the next
//! is taken: a Task running when the process dies runs again after a restart
//! (at-least-once), and a Wait or retry delay resumes from its stored deadline.
//!
//! A `.waitForTaskToken` Task gets a fresh token per attempt (`$$.Task.Token`), kept with
//! the execution, and waits until [`Engine::send_task_success`] or
//! [`Engine::send_task_failure`] answers it, or its `TimeoutSeconds`/`TimeoutSecondsPath`
//! (`States.Timeout`) or `HeartbeatSeconds` (`States.HeartbeatTimeout`) runs out; a late or
//! repeated answer is refused (`TaskTimedOut`, `InvalidToken`).
//!
//! Not here: Map and Parallel states, JSONata, `.sync` integrations, execution-level
//! `TimeoutSeconds`.

pub mod choice;
pub mod definition;
pub mod error;
pub mod intrinsic;
pub mod io;
pub mod path;
pub mod payload;
pub mod retry;
mod runner;
pub mod store;
pub mod task;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::ports::{
    Clock, ExecutionEvent, ExecutionPage, ExecutionStatus, ExecutionView, Orchestrator, PageQuery,
    PortError, StartOutcome,
};
use definition::{Definition, StateKind};
use store::{Answer, Lookup, NewEvent, Store, Update};

pub use error::{EngineError, StateError, TokenError};
pub use store::HistoryEvent;
pub use task::{TaskFailure, TaskHandler};

/// The embedded Step Functions engine. Share it as `Arc<Engine>`.
pub struct Engine {
    store: Store,
    definition: Definition,
    handlers: task::Handlers,
    clock: Arc<dyn Clock>,
    /// Wakes the scheduler: a new execution, an answered token, a runner done.
    notify: Notify,
    /// Executions a runner is working on, so each has at most one.
    active: Mutex<HashSet<String>>,
}

/// Marks an execution as taken by a runner until dropped.
struct Claim<'a> {
    engine: &'a Engine,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.engine.active_set().remove(&self.name);
        self.engine.notify.notify_one();
    }
}

impl Engine {
    /// Opens (creating if needed) the database, parses the definition after substitutions.
    pub fn open(
        db_path: &Path,
        definition: &str,
        substitutions: &HashMap<String, String>,
        handlers: HashMap<String, Arc<dyn TaskHandler>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Engine>, EngineError> {
        let text = definition::substitute(definition, substitutions);
        let definition = Definition::parse(&text).map_err(EngineError::Definition)?;
        check_handlers(&definition, &handlers)?;
        let store = Store::open(db_path)?;
        Ok(Arc::new(Engine {
            store,
            definition,
            handlers,
            clock,
            notify: Notify::new(),
            active: Mutex::new(HashSet::new()),
        }))
    }

    fn active_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn claim(&self, name: &str) -> Option<Claim<'_>> {
        self.active_set().insert(name.to_string()).then(|| Claim {
            engine: self,
            name: name.to_string(),
        })
    }

    /// Runs forever: resumes every RUNNING execution found in the database, runs runnable ones
    /// (each execution by at most one runner at a time, different executions concurrently as tokio tasks),
    /// and sleeps (via the Clock) until the earliest wake_at or until notified (a new
    /// execution, an answered token).
    pub fn spawn_scheduler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move { engine.schedule_forever().await })
    }

    async fn schedule_forever(self: Arc<Self>) {
        loop {
            let now = self.clock.now();
            let (runnable, next) = match self.store.due(now).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(error = %err, "engine scheduler: cannot read executions; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for name in runnable {
                if self.active_set().contains(&name) {
                    continue;
                }
                let engine = Arc::clone(&self);
                tokio::spawn(async move {
                    let Some(_claim) = engine.claim(&name) else {
                        return;
                    };
                    if let Err(err) = runner::run(&engine, &name).await {
                        tracing::error!(execution = %name, error = %err, "engine: execution step failed; retrying in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
            // Anything due before `now` was just started or is being run; its runner
            // notifies when done.
            match next {
                Some(wake) => {
                    let delay = (wake - now).to_std().unwrap_or(Duration::ZERO);
                    tokio::select! {
                        biased;
                        () = self.notify.notified() => {}
                        () = self.clock.sleep(delay) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Runs until no execution is RUNNING, without a scheduler: runs runnable executions; when all
    /// remaining ones are waiting, sleeps via the clock until the earliest wake_at (a ManualClock
    /// then jumps). For tests and benchmarks: a 36-hour poll loop must finish in milliseconds.
    pub async fn run_until_idle(&self) -> Result<(), EngineError> {
        loop {
            let now = self.clock.now();
            let mut ran = false;
            for name in self.store.runnable(now).await? {
                if let Some(_claim) = self.claim(&name) {
                    runner::run(self, &name).await?;
                    ran = true;
                }
            }
            if ran {
                continue;
            }
            if !self.store.any_running().await? {
                return Ok(());
            }
            match self.store.earliest_wake().await? {
                Some(wake) if wake > now => {
                    self.clock
                        .sleep((wake - now).to_std().unwrap_or(Duration::ZERO))
                        .await;
                }
                // Due, but another runner has it: give it a moment.
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// `SendTaskSuccess`: the task waiting on `token` succeeds with `output`.
    pub async fn send_task_success(&self, token: &str, output: Value) -> Result<(), TokenError> {
        self.answer(token, Answer::Success(output)).await
    }

    /// `SendTaskFailure`: the task waiting on `token` fails with `error` and `cause`, which
    /// its `Retry` and `Catch` see.
    pub async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), TokenError> {
        let answer = Answer::Failure {
            error: error.to_owned(),
            cause: cause.to_owned(),
        };
        self.answer(token, answer).await
    }

    /// `SendTaskHeartbeat`: the task waiting on `token` is still making progress; its
    /// `HeartbeatSeconds` start again.
    pub async fn send_task_heartbeat(&self, token: &str) -> Result<(), TokenError> {
        let lookup = self.store.heartbeat(token, self.clock.now()).await?;
        let found = token_found(lookup);
        self.notify.notify_one();
        found
    }

    async fn answer(&self, token: &str, answer: Answer) -> Result<(), TokenError> {
        let lookup = self.store.answer(token, answer, self.clock.now()).await?;
        let found = token_found(lookup);
        self.notify.notify_one();
        found
    }

    /// The history events of an execution, in order.
    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEvent>, EngineError> {
        if !self.store.exists(name).await? {
            return Err(EngineError::NotFound(name.to_string()));
        }
        self.store.history(name).await
    }
}

fn token_found(lookup: Lookup) -> Result<(), TokenError> {
    match lookup {
        Lookup::Open(_) => Ok(()),
        Lookup::Closed => Err(TokenError::TaskTimedOut),
        Lookup::Unknown => Err(TokenError::InvalidToken),
    }
}

/// Every Task must have a handler; a literal `FunctionName` is checked now rather than at
/// the first execution that reaches it.
fn check_handlers(definition: &Definition, handlers: &task::Handlers) -> Result<(), EngineError> {
    for (name, state) in &definition.states {
        let StateKind::Task { resource, .. } = &state.kind else {
            continue;
        };
        let wanted = if task::integration(resource) == task::LAMBDA_INVOKE {
            state
                .io
                .parameters
                .as_ref()
                .and_then(|p| p.get("FunctionName"))
                .and_then(Value::as_str)
        } else {
            Some(task::integration(resource))
        };
        if let Some(wanted) = wanted
            && !handlers.contains_key(wanted)
        {
            return Err(EngineError::Definition(format!(
                "state {name:?} calls {wanted:?}, but no handler is registered under that name \
                 (check the substitutions and the handlers map)"
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Orchestrator for Engine {
    async fn start(&self, name: &str, input: &Value) -> Result<StartOutcome, PortError> {
        if name.is_empty() || name.chars().count() > 80 {
            return Err(PortError::Permanent(format!(
                "execution name {name:?}: must be 1 to 80 characters"
            )));
        }
        let first = &self.definition.start_at;
        let mut events = vec![NewEvent::new(
            "ExecutionStarted",
            None,
            json!({"input": input}),
        )];
        let Update::Enter { wake_at, .. } = runner::enter(self, first, input.clone(), &mut events)
        else {
            return Err(PortError::Permanent("engine: unexpected start step".into()));
        };
        let outcome = self
            .store
            .insert(name, input, first, wake_at, &events, self.clock.now())
            .await?;
        if outcome == StartOutcome::Started {
            self.notify.notify_one();
        }
        Ok(outcome)
    }

    async fn describe(&self, name: &str) -> Result<Option<ExecutionView>, PortError> {
        Ok(self.store.view(name).await?)
    }

    async fn history(&self, name: &str) -> Result<Vec<ExecutionEvent>, PortError> {
        self.history_after(name, 0).await
    }

    async fn history_after(
        &self,
        name: &str,
        after: usize,
    ) -> Result<Vec<ExecutionEvent>, PortError> {
        let text =
            |detail: &Value, key: &str| detail.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(self
            .store
            .history_after(name, u64::try_from(after).unwrap_or(u64::MAX))
            .await?
            .into_iter()
            .map(|event| ExecutionEvent {
                timestamp: event.timestamp,
                error: text(&event.detail, "error"),
                cause: text(&event.detail, "cause"),
                output: (event.event_type == "TaskSucceeded")
                    .then(|| event.detail.get("output").cloned())
                    .flatten(),
                event_type: event.event_type,
                state: event.state,
            })
            .collect())
    }

    async fn list(
        &self,
        status: Option<ExecutionStatus>,
        limit: usize,
    ) -> Result<Vec<ExecutionView>, PortError> {
        Ok(self.store.list(status, limit).await?)
    }

    async fn page(&self, query: &PageQuery) -> Result<ExecutionPage, PortError> {
        Ok(self.store.page(query).await?)
    }

    async fn stop(&self, name: &str, error: &str, cause: &str) -> Result<(), PortError> {
        if !self
            .store
            .abort(name, error, cause, self.clock.now())
            .await?
            && !self.store.exists(name).await?
        {
            return Err(EngineError::NotFound(name.to_string()).into());
        }
        self.notify.notify_one();
        Ok(())
    }

    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, PortError> {
        Ok(self.store.purge_finished(before).await?)
    }
}

#[cfg(test)]
mod tests;
