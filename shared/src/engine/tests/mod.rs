//! Engine tests: whole executions on a temporary database under a manual clock.

mod persistence;
mod real_definition;
mod states;
mod tokens;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::{Engine, TaskFailure, TaskHandler};
use crate::clock::ManualClock;
use crate::ports::Clock;

/// A handler made of a closure.
struct FnHandler<F>(F);

#[async_trait]
impl<F> TaskHandler for FnHandler<F>
where
    F: Fn(Value) -> Result<Value, TaskFailure> + Send + Sync,
{
    async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure> {
        (self.0)(payload)
    }
}

fn handler(
    f: impl Fn(Value) -> Result<Value, TaskFailure> + Send + Sync + 'static,
) -> Arc<dyn TaskHandler> {
    Arc::new(FnHandler(f))
}

/// A handler that records each call (at `clock`'s time) in `calls`, then answers.
fn recording(
    calls: &Calls,
    clock: &Arc<ManualClock>,
    answer: impl Fn(&Value) -> Result<Value, TaskFailure> + Send + Sync + 'static,
) -> Arc<dyn TaskHandler> {
    let (calls, clock) = (calls.clone(), clock.clone());
    handler(move |payload| {
        calls.record(clock.now(), &payload);
        answer(&payload)
    })
}

/// One call a handler got: when (by the manual clock) and with what.
type Call = (DateTime<Utc>, Value);

/// A record of the calls a handler got.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn record(&self, at: DateTime<Utc>, payload: &Value) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at, payload.clone()));
    }

    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self) -> usize {
        self.all().len()
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid start time")
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(t0()))
}

fn open(
    db: &Path,
    definition: &str,
    handlers: Vec<(&str, Arc<dyn TaskHandler>)>,
    clock: &Arc<ManualClock>,
) -> Arc<Engine> {
    let handlers = handlers
        .into_iter()
        .map(|(name, h)| (name.to_string(), h))
        .collect();
    let clock: Arc<dyn Clock> = clock.clone();
    Engine::open(db, definition, &HashMap::new(), handlers, clock).expect("engine opens")
}

async fn event_types(engine: &Engine, name: &str) -> Vec<String> {
    engine
        .history(name)
        .await
        .expect("history")
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}
