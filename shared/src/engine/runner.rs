//! Runs one execution: reads where it is, takes one step, writes the step, repeats, until the
//! execution ends or has to sleep (a Wait or a retry delay). Every step is written before
//! the next is taken, so a restart resumes from the last written step.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Engine;
use super::choice;
use super::definition::{ErrorSource, Limit, State, StateKind, Transition, WaitFor};
use super::error::{EngineError, HEARTBEAT_TIMEOUT, NO_CHOICE_MATCHED, StateError, TIMEOUT};
use super::io::{self, Context};
use super::payload::apply_template;
use super::retry;
use super::store::{Answer, Cursor, NewEvent, NewWait, Update, Wait};
use super::task;
use crate::ports::ExecutionStatus;

/// A step to write: the update and its events, based on `version`.
struct Step {
    version: i64,
    update: Update,
    events: Vec<NewEvent>,
}

/// Runs execution `name` until it ends or sleeps.
pub async fn run(engine: &Engine, name: &str) -> Result<(), EngineError> {
    loop {
        let Some(cursor) = engine.store.cursor(name).await? else {
            return Ok(());
        };
        if cursor.status != ExecutionStatus::Running {
            return Ok(());
        }
        if cursor.wake_at.is_some_and(|wake| wake > engine.clock.now()) {
            return Ok(());
        }
        let step = match engine.definition.state(&cursor.state) {
            Some(state) => take_step(engine, name, &cursor, state).await?,
            None => {
                let err = StateError::runtime(format!(
                    "state {:?} is not in the definition; it was removed while the execution ran",
                    cursor.state
                ));
                Some(fail(cursor.version, &err, Vec::new()))
            }
        };
        if let Some(step) = step {
            engine
                .store
                .apply(
                    name,
                    step.version,
                    &step.update,
                    &step.events,
                    engine.clock.now(),
                )
                .await?;
        }
    }
}

/// The events of entering `state` with `input`, and its update. A Wait's deadline is
/// computed and stored now, so a restart does not wait from scratch.
pub fn enter(
    engine: &Engine,
    state_name: &str,
    input: Value,
    events: &mut Vec<NewEvent>,
) -> Update {
    let wake_at = engine.definition.state(state_name).and_then(|state| {
        events.push(NewEvent::new(
            format!("{}StateEntered", state.kind.event_prefix()),
            Some(state_name),
            json!({"input": input}),
        ));
        match &state.kind {
            StateKind::Wait { wait, .. } => deadline(state, wait, &input, engine.clock.now()).ok(),
            _ => None,
        }
    });
    Update::Enter {
        state: state_name.to_string(),
        input,
        wake_at,
    }
}

/// When a Wait state entered now with `raw` input ends.
fn deadline(
    state: &State,
    wait: &WaitFor,
    raw: &Value,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, StateError> {
    let input = io::select(state.io.input_path.as_ref(), raw, "InputPath")?;
    let after = |seconds: u64| {
        now + chrono::Duration::from_std(Duration::from_secs(seconds))
            .unwrap_or(chrono::Duration::MAX)
    };
    match wait {
        WaitFor::Seconds(seconds) => Ok(after(*seconds)),
        WaitFor::Timestamp(time) => Ok(*time),
        WaitFor::SecondsPath(path) => {
            let value = io::select(Some(path), &input, "SecondsPath")?;
            value
                .as_f64()
                .filter(|n| *n >= 0.0)
                .map(|n| after(n as u64))
                .ok_or_else(|| {
                    StateError::runtime(format!(
                        "SecondsPath {:?} gave {value}, not a non-negative number of seconds",
                        path.as_str()
                    ))
                })
        }
        WaitFor::TimestampPath(path) => {
            let value = io::select(Some(path), &input, "TimestampPath")?;
            value
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| {
                    StateError::runtime(format!(
                        "TimestampPath {:?} gave {value}, not an RFC 3339 timestamp",
                        path.as_str()
                    ))
                })
        }
    }
}

/// Leaves `state` with `output`: into the next state, or the end of the execution.
fn leave(
    engine: &Engine,
    cursor: &Cursor,
    state: &State,
    transition: &Transition,
    output: Value,
    mut events: Vec<NewEvent>,
) -> Step {
    events.push(NewEvent::new(
        format!("{}StateExited", state.kind.event_prefix()),
        Some(&cursor.state),
        json!({"output": output}),
    ));
    let update = match transition {
        Transition::Next(next) => enter(engine, next, output, &mut events),
        Transition::End => {
            events.push(NewEvent::new(
                "ExecutionSucceeded",
                None,
                json!({"output": output}),
            ));
            Update::Finish {
                status: ExecutionStatus::Succeeded,
                output: Some(output),
                error: None,
                cause: None,
            }
        }
    };
    Step {
        version: cursor.version,
        update,
        events,
    }
}

/// Ends the execution as failed with `err`, after `events`.
fn fail(version: i64, err: &StateError, mut events: Vec<NewEvent>) -> Step {
    events.push(NewEvent::new(
        "ExecutionFailed",
        None,
        json!({"error": err.error, "cause": err.cause}),
    ));
    Step {
        version,
        update: Update::Finish {
            status: ExecutionStatus::Failed,
            output: None,
            error: Some(err.error.clone()),
            cause: Some(err.cause.clone()),
        },
        events,
    }
}

async fn take_step(
    engine: &Engine,
    name: &str,
    cursor: &Cursor,
    state: &State,
) -> Result<Option<Step>, EngineError> {
    let raw = &cursor.state_input;
    let step = match &state.kind {
        StateKind::Task { resource, .. } => {
            if task::waits_for_token(resource)
                && let Some(wait) = engine.store.wait(name).await?
                && !wait.closed
                && (wait.invoked || wait.answer.is_some())
            {
                return resume_wait(engine, name, cursor, state, wait).await;
            }
            // A token attempt cut off before its handler returned starts again, with a
            // new token (at least once, as any Task running when the process died).
            return run_task(engine, name, cursor, state).await;
        }
        StateKind::Wait { wait, transition } => match cursor.wake_at {
            Some(_) => match io::select(state.io.input_path.as_ref(), raw, "InputPath")
                .and_then(|input| io::select(state.io.output_path.as_ref(), &input, "OutputPath"))
            {
                Ok(output) => leave(engine, cursor, state, transition, output, Vec::new()),
                Err(err) => fail(cursor.version, &err, Vec::new()),
            },
            // The deadline could not be computed on entry: fail with the reason.
            None => match deadline(state, wait, raw, engine.clock.now()) {
                Ok(wake_at) => {
                    engine.store.set_wake(name, cursor.version, wake_at).await?;
                    return Ok(None);
                }
                Err(err) => fail(cursor.version, &err, Vec::new()),
            },
        },
        StateKind::Choice { rules, default } => {
            let chosen =
                io::select(state.io.input_path.as_ref(), raw, "InputPath").and_then(|input| {
                    let next = choice::first_match(rules, &input)?
                        .or(default.as_deref())
                        .ok_or_else(|| {
                            StateError::new(
                                NO_CHOICE_MATCHED,
                                format!(
                                    "no Choice rule of {:?} matched and there is no Default",
                                    cursor.state
                                ),
                            )
                        })?;
                    let output = io::select(state.io.output_path.as_ref(), &input, "OutputPath")?;
                    Ok((next.to_string(), output))
                });
            match chosen {
                Ok((next, output)) => {
                    let transition = Transition::Next(next);
                    leave(engine, cursor, state, &transition, output, Vec::new())
                }
                Err(err) => fail(cursor.version, &err, Vec::new()),
            }
        }
        StateKind::Pass { result, transition } => {
            let context = context(name, cursor).to_value();
            let output =
                io::select(state.io.input_path.as_ref(), raw, "InputPath").and_then(|input| {
                    let value = match (result, &state.io.parameters) {
                        (Some(result), _) => result.clone(),
                        (None, Some(template)) => apply_template(template, &input, &context)?,
                        (None, None) => input,
                    };
                    let combined = io::place(state.io.result_path.as_ref(), raw, value)?;
                    io::select(state.io.output_path.as_ref(), &combined, "OutputPath")
                });
            match output {
                Ok(output) => leave(engine, cursor, state, transition, output, Vec::new()),
                Err(err) => fail(cursor.version, &err, Vec::new()),
            }
        }
        StateKind::Succeed => {
            let output = io::select(state.io.input_path.as_ref(), raw, "InputPath")
                .and_then(|input| io::select(state.io.output_path.as_ref(), &input, "OutputPath"));
            match output {
                Ok(output) => leave(engine, cursor, state, &Transition::End, output, Vec::new()),
                Err(err) => fail(cursor.version, &err, Vec::new()),
            }
        }
        StateKind::Fail { error, cause } => {
            let read = |source: &Option<ErrorSource>, field: &str| match source {
                None => Ok(None),
                Some(ErrorSource::Literal(text)) => Ok(Some(text.clone())),
                Some(ErrorSource::Path(path)) => {
                    let value = io::select(Some(path), raw, field)?;
                    Ok(Some(
                        value
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| value.to_string()),
                    ))
                }
            };
            let err = match (read(error, "ErrorPath"), read(cause, "CausePath")) {
                (Ok(error), Ok(cause)) => {
                    StateError::new(error.unwrap_or_default(), cause.unwrap_or_default())
                }
                (Err(err), _) | (_, Err(err)) => err,
            };
            fail(cursor.version, &err, Vec::new())
        }
    };
    Ok(Some(step))
}

fn context<'a>(name: &'a str, cursor: &'a Cursor) -> Context<'a> {
    Context {
        name,
        input: &cursor.input,
        started_at: cursor.started_at,
        state: &cursor.state,
        entered_at: cursor.entered_at,
        retry_count: cursor.retry_counts.iter().sum(),
        task_token: None,
    }
}

/// `TimeoutSeconds` of a `.waitForTaskToken` task without one, as in Step Functions.
const DEFAULT_TOKEN_TIMEOUT_SECONDS: u64 = 99_999_999;

/// What the history shows in place of a task token.
const TOKEN_PLACEHOLDER: &str = "(task token)";

/// A Task's limit in seconds: as written, or read from the state's input.
fn limit_seconds(limit: &Limit, input: &Value, field: &str) -> Result<u64, StateError> {
    match limit {
        Limit::Seconds(seconds) => Ok(*seconds),
        Limit::Path(path) => {
            let value = io::select(Some(path), input, field)?;
            value.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                StateError::runtime(format!(
                    "{field} {:?} gave {value}, not a positive integer of seconds",
                    path.as_str()
                ))
            })
        }
    }
}

/// `value` with every string equal to `token` replaced, so history never holds a token.
fn redact(value: &Value, token: &str) -> Value {
    match value {
        Value::String(text) if text == token => Value::String(TOKEN_PLACEHOLDER.into()),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, token)).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), redact(v, token)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn after_seconds(now: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    now + chrono::Duration::from_std(Duration::from_secs(seconds)).unwrap_or(chrono::Duration::MAX)
}

/// A `.waitForTaskToken` Task whose handler has returned: its token was answered, or its
/// timeout or heartbeat ran out, or (woken early) it sleeps on until its deadline.
async fn resume_wait(
    engine: &Engine,
    name: &str,
    cursor: &Cursor,
    state: &State,
    wait: Wait,
) -> Result<Option<Step>, EngineError> {
    let now = engine.clock.now();
    let beat_out = wait
        .heartbeat_at
        .is_some_and(|beat| beat <= now && beat <= wait.timeout_at);
    let outcome = match wait.answer {
        Some(Answer::Success(output)) => Ok(output),
        Some(Answer::Failure { error, cause }) => Err(StateError::new(error, cause)),
        None if beat_out => Err(StateError::new(
            HEARTBEAT_TIMEOUT,
            "no heartbeat came within the task's HeartbeatSeconds",
        )),
        None if wait.timeout_at <= now => Err(StateError::new(
            TIMEOUT,
            "the task token was not answered within the task's timeout",
        )),
        None => {
            engine
                .store
                .set_wake(name, cursor.version, wait.deadline())
                .await?;
            return Ok(None);
        }
    };
    Ok(Some(settle(
        engine,
        name,
        cursor,
        state,
        cursor.version,
        outcome,
    )))
}

/// One attempt of a Task: written as scheduled, run, then its result or error handled. A
/// `.waitForTaskToken` attempt gets a fresh token, stored with the attempt, and waits for
/// it once its handler has returned.
async fn run_task(
    engine: &Engine,
    name: &str,
    cursor: &Cursor,
    state: &State,
) -> Result<Option<Step>, EngineError> {
    let StateKind::Task {
        resource,
        timeout,
        heartbeat,
        ..
    } = &state.kind
    else {
        return Ok(None);
    };
    let raw = &cursor.state_input;
    let token = task::waits_for_token(resource).then(task::new_token);
    let mut context = context(name, cursor);
    context.task_token = token.as_deref();
    let context = context.to_value();
    let prepared = io::select(state.io.input_path.as_ref(), raw, "InputPath").and_then(|input| {
        let parameters = match &state.io.parameters {
            Some(template) => apply_template(template, &input, &context)?,
            None => input.clone(),
        };
        let timeout = timeout
            .as_ref()
            .map(|limit| limit_seconds(limit, &input, "TimeoutSecondsPath"))
            .transpose()?
            .or(token.is_some().then_some(DEFAULT_TOKEN_TIMEOUT_SECONDS));
        let heartbeat = match (&token, heartbeat) {
            (Some(_), Some(limit)) => Some(limit_seconds(limit, &input, "HeartbeatSecondsPath")?),
            _ => None,
        };
        Ok((parameters, timeout, heartbeat))
    });
    let (parameters, timeout_seconds, heartbeat_seconds) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return Ok(Some(fail(cursor.version, &err, Vec::new()))),
    };
    let shown = match &token {
        Some(token) => redact(&parameters, token),
        None => parameters.clone(),
    };
    let scheduled = [
        NewEvent::new(
            "TaskScheduled",
            Some(&cursor.state),
            json!({
                "resource": resource,
                "parameters": shown,
                "timeoutInSeconds": timeout_seconds,
                "heartbeatInSeconds": heartbeat_seconds,
            }),
        ),
        NewEvent::new("TaskStarted", Some(&cursor.state), json!({})),
    ];
    let now = engine.clock.now();
    let written = match &token {
        Some(token) => {
            let wait = NewWait {
                token: token.clone(),
                timeout_at: after_seconds(
                    now,
                    timeout_seconds.unwrap_or(DEFAULT_TOKEN_TIMEOUT_SECONDS),
                ),
                heartbeat_seconds,
            };
            engine
                .store
                .begin_wait(name, cursor.version, &scheduled, wait, now)
                .await?
        }
        None => {
            engine
                .store
                .apply(name, cursor.version, &Update::Attempt, &scheduled, now)
                .await?
        }
    };
    let Some(version) = written else {
        return Ok(None);
    };
    let outcome = task::invoke(
        &engine.handlers,
        &engine.clock,
        resource,
        parameters,
        timeout_seconds.map(Duration::from_secs),
    )
    .await;
    if let (Some(token), Ok(submitted)) = (&token, &outcome) {
        // The handler's result is not the task's: the token's answer will be.
        let events = [NewEvent::new(
            "TaskSubmitted",
            Some(&cursor.state),
            json!({ "output": submitted }),
        )];
        engine
            .store
            .waiting(name, token, &events, engine.clock.now())
            .await?;
        return Ok(None);
    }
    Ok(Some(settle(engine, name, cursor, state, version, outcome)))
}

/// A Task attempt's result or error, handled: into the next state, a retry, a catcher, or
/// the execution's failure.
fn settle(
    engine: &Engine,
    name: &str,
    cursor: &Cursor,
    state: &State,
    version: i64,
    outcome: Result<Value, StateError>,
) -> Step {
    let StateKind::Task {
        retry,
        catch,
        transition,
        ..
    } = &state.kind
    else {
        let err = StateError::runtime(format!("state {:?} is not a Task", cursor.state));
        return fail(version, &err, Vec::new());
    };
    let raw = &cursor.state_input;
    let context = context(name, cursor).to_value();
    let mut events = Vec::new();
    let processed = match outcome {
        Ok(result) => {
            events.push(NewEvent::new(
                "TaskSucceeded",
                Some(&cursor.state),
                json!({"output": result}),
            ));
            let selected = match &state.io.result_selector {
                Some(template) => apply_template(template, &result, &context),
                None => Ok(result),
            };
            selected
                .and_then(|selected| io::place(state.io.result_path.as_ref(), raw, selected))
                .and_then(|combined| {
                    io::select(state.io.output_path.as_ref(), &combined, "OutputPath")
                })
        }
        Err(err) => {
            let event_type = if err.error == TIMEOUT || err.error == HEARTBEAT_TIMEOUT {
                "TaskTimedOut"
            } else {
                "TaskFailed"
            };
            events.push(NewEvent::new(
                event_type,
                Some(&cursor.state),
                json!({"error": err.error, "cause": err.cause}),
            ));
            Err(err)
        }
    };
    let err = match processed {
        Ok(output) => {
            let mut step = leave(engine, cursor, state, transition, output, events);
            step.version = version;
            return step;
        }
        Err(err) => err,
    };
    let now = engine.clock.now();
    if let Some(index) = retry::find_retrier(retry, &err.error) {
        let mut counts = cursor.retry_counts.clone();
        counts.resize(retry.len(), 0);
        let retrier = &retry[index];
        if counts[index] < retrier.max_attempts {
            let delay = retrier.delay(counts[index], retry::random_unit());
            counts[index] += 1;
            let wake_at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            return Step {
                version,
                update: Update::Retry {
                    retry_counts: counts,
                    wake_at,
                },
                events,
            };
        }
    }
    if let Some(catcher) = retry::find_catcher(catch, &err.error) {
        let caught = json!({"Error": err.error, "Cause": err.cause});
        return match io::place(catcher.result_path.as_ref(), raw, caught) {
            Ok(output) => {
                let transition = Transition::Next(catcher.next.clone());
                let mut step = leave(engine, cursor, state, &transition, output, events);
                step.version = version;
                step
            }
            Err(place_err) => fail(version, &place_err, events),
        };
    }
    fail(version, &err, events)
}
