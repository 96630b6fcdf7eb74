//! The steps as state-machine Task handlers: decode the state's payload, call the step,
//! encode its result or its error (name and cause), exactly as the Lambda functions do.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::{TaskFailure, TaskHandler};

use super::{StepError, Steps, errors};

/// The Task handlers of the state machine: each calls its step, as the Lambda functions do
/// in AWS, keyed by the names [`crate::embedded::substitutions`] gives the placeholders.
pub fn step_handlers(steps: &Arc<Steps>) -> HashMap<String, Arc<dyn TaskHandler>> {
    [
        ("submit", Step::Submit),
        ("poll-worker", Step::Poll),
        ("finish-and-callback", Step::Finish),
    ]
    .into_iter()
    .map(|(name, step)| {
        let handler: Arc<dyn TaskHandler> = Arc::new(StepHandler {
            steps: Arc::clone(steps),
            step,
        });
        (name.to_owned(), handler)
    })
    .collect()
}

/// Which step a handler calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `submit`
    Submit,
    /// `poll-worker`
    Poll,
    /// `finish-and-callback`
    Finish,
}

/// Calls a step with the state's payload, as the Lambda functions do in AWS.
pub struct StepHandler {
    steps: Arc<Steps>,
    step: Step,
}

impl StepHandler {
    /// A handler calling `step` over `steps`.
    pub fn new(steps: Arc<Steps>, step: Step) -> Self {
        Self { steps, step }
    }
}

fn decode<T: DeserializeOwned>(payload: Value) -> Result<T, TaskFailure> {
    serde_json::from_value(payload).map_err(|err| {
        TaskFailure::new(
            errors::BAD_INPUT,
            format!("the step's input is not what it expects: {err}"),
        )
    })
}

/// The FinishAndCallback state sends `{"input": STATE INPUT, "state_machine_arn": ARN}`
/// (the ARN from the context object); the step reads that as one [`super::FinishInput`].
/// A bare state input (the step called directly) is taken as it is.
fn finish_payload(payload: Value) -> Value {
    match payload {
        Value::Object(mut wrapper) if wrapper.contains_key("input") => {
            let arn = wrapper.remove("state_machine_arn").unwrap_or(Value::Null);
            let mut input = wrapper.remove("input").unwrap_or(Value::Null);
            if let Value::Object(fields) = &mut input {
                fields.insert("state_machine_arn".into(), arn);
            }
            input
        }
        bare => bare,
    }
}

fn encode<T: Serialize>(result: Result<T, StepError>) -> Result<Value, TaskFailure> {
    let output = result.map_err(|err| TaskFailure::new(err.error, err.cause))?;
    serde_json::to_value(output).map_err(|err| TaskFailure::new(errors::BAD_INPUT, err.to_string()))
}

#[async_trait]
impl TaskHandler for StepHandler {
    async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure> {
        match self.step {
            Step::Submit => encode(super::submit(&self.steps, decode(payload)?).await),
            // WaitForWorker sends `{"input": STATE INPUT, "task_token": TOKEN}`; PollWorker
            // (the safety net) sends the state input itself.
            Step::Poll if payload.get("task_token").is_some() => {
                encode(super::arm_wait(&self.steps, decode(payload)?).await)
            }
            Step::Poll => encode(super::poll_worker(&self.steps, decode(payload)?).await),
            Step::Finish => {
                let input = decode(finish_payload(payload))?;
                encode(super::finish_and_callback(&self.steps, input).await)
            }
        }
    }
}
