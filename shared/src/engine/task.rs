//! Task handlers: what a Task state's `Resource` calls, and how a call is made (lambda:invoke
//! wrapping, `TimeoutSeconds`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::error::{StateError, TIMEOUT};
use crate::ports::Clock;

/// The resource of a Lambda invocation with a `FunctionName` and `Payload` in `Parameters`.
pub const LAMBDA_INVOKE: &str = "arn:aws:states:::lambda:invoke";

/// The suffix of a callback integration: the task waits for its token to be answered.
pub const WAIT_FOR_TASK_TOKEN: &str = ".waitForTaskToken";

/// Whether a Task with `resource` waits for its task token (`...invoke.waitForTaskToken`).
pub fn waits_for_token(resource: &str) -> bool {
    resource.ends_with(WAIT_FOR_TASK_TOKEN)
}

/// The integration a resource calls, without the callback suffix.
pub fn integration(resource: &str) -> &str {
    resource
        .strip_suffix(WAIT_FOR_TASK_TOKEN)
        .unwrap_or(resource)
}

/// A fresh task token: 48 random bytes, URL-safe base64 (64 characters).
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 48];
    // The OS generator does not fail on supported platforms; a failure leaves zeros,
    // which the UNIQUE token column would then refuse rather than reuse.
    let _ = getrandom::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An error a task handler reports: Step Functions' error name and cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// The error name, matched by `Retry` and `Catch` (`TaskRunner.Transient`).
    pub error: String,
    /// What happened, in words.
    pub cause: String,
}

impl TaskFailure {
    /// A failure with this name and cause.
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            cause: cause.into(),
        }
    }
}

/// Does the work of a Task state: one step function of the state machine.
#[async_trait]
pub trait TaskHandler: Send + Sync {
    /// Runs the task on `payload`; the result becomes the task's result.
    async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure>;
}

/// Handlers by function name (for lambda:invoke) or by resource (for plain resources).
pub type Handlers = HashMap<String, Arc<dyn TaskHandler>>;

/// The handler a Task's resource and parameters name, with the payload to give it and
/// whether its result is wrapped as lambda:invoke wraps it.
fn target<'a>(
    handlers: &'a Handlers,
    resource: &str,
    parameters: Value,
) -> Result<(&'a Arc<dyn TaskHandler>, Value, bool), StateError> {
    let resource = integration(resource);
    if resource == LAMBDA_INVOKE {
        let function = parameters
            .get("FunctionName")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                StateError::runtime("lambda:invoke needs a \"FunctionName\" string in Parameters")
            })?;
        let handler = handlers.get(function).ok_or_else(|| {
            StateError::new(
                "Lambda.ResourceNotFoundException",
                format!("no handler is registered for function {function:?}"),
            )
        })?;
        let payload = parameters
            .get("Payload")
            .cloned()
            .unwrap_or_else(|| json!({}));
        Ok((handler, payload, true))
    } else {
        let handler = handlers.get(resource).ok_or_else(|| {
            StateError::runtime(format!(
                "no handler is registered for resource {resource:?}"
            ))
        })?;
        Ok((handler, parameters, false))
    }
}

/// Calls the handler for `resource` with `parameters`, failing with `States.Timeout` after
/// `timeout` as measured by `clock`.
pub async fn invoke(
    handlers: &Handlers,
    clock: &Arc<dyn Clock>,
    resource: &str,
    parameters: Value,
    timeout: Option<Duration>,
) -> Result<Value, StateError> {
    let (handler, payload, wrap) = target(handlers, resource, parameters)?;
    // The deadline is fixed before the call starts: a call may move a manual clock.
    let end = timeout.map(|limit| {
        clock.now() + chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX)
    });
    let call = handler.invoke(payload);
    let result = match (timeout, end) {
        (Some(limit), Some(end)) => tokio::select! {
            biased;
            result = call => result,
            () = clock.reached(end) => {
                return Err(StateError::new(TIMEOUT, format!("the task did not finish within {} seconds", limit.as_secs())));
            }
        },
        _ => call.await,
    };
    match result {
        Ok(value) if wrap => {
            Ok(json!({"ExecutedVersion": "$LATEST", "Payload": value, "StatusCode": 200}))
        }
        Ok(value) => Ok(value),
        Err(failure) => Err(StateError::new(failure.error, failure.cause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    struct Echo;

    #[async_trait]
    impl TaskHandler for Echo {
        async fn invoke(&self, payload: Value) -> Result<Value, TaskFailure> {
            if payload.get("fail").is_some() {
                return Err(TaskFailure::new("My.Error", "asked to fail"));
            }
            Ok(payload)
        }
    }

    fn handlers() -> Handlers {
        HashMap::from([("echo".to_string(), Arc::new(Echo) as Arc<dyn TaskHandler>)])
    }

    #[tokio::test]
    async fn lambda_invoke_wraps_and_plain_resources_do_not() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(chrono::Utc::now()));
        let params = json!({"FunctionName": "echo", "Payload": {"x": 1}});
        let wrapped = invoke(&handlers(), &clock, LAMBDA_INVOKE, params, None)
            .await
            .expect("invoke");
        assert_eq!(
            wrapped,
            json!({"ExecutedVersion": "$LATEST", "Payload": {"x": 1}, "StatusCode": 200})
        );
        let raw = invoke(&handlers(), &clock, "echo", json!({"x": 2}), None)
            .await
            .expect("invoke");
        assert_eq!(raw, json!({"x": 2}));
        let err = invoke(&handlers(), &clock, "echo", json!({"fail": 1}), None)
            .await
            .expect_err("fails");
        assert_eq!(err, StateError::new("My.Error", "asked to fail"));
        let missing = json!({"FunctionName": "nope"});
        let err = invoke(&handlers(), &clock, LAMBDA_INVOKE, missing, None)
            .await
            .expect_err("missing");
        assert_eq!(err.error, "Lambda.ResourceNotFoundException");
    }
}
