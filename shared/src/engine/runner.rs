//! Runs one execution: reads where it is, takes one step, writes the step, repeats, until the
//! execution ends or has to sleep (a Wait or a retry delay). Every step is written before
//! the next is taken, so a restart resumes from the last written step.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Engine;
use super::choice;
use super::definition::{ErrorSource, State, StateKind, Transition, WaitFor};
use super::error::{EngineError, NO_CHOICE_MATCHED, StateError};
use super::io::{self, Context};
use super::payload::apply_template;
use super::retry;
use super::store::{Cursor, NewEvent, Update};
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
            engine.take_wake(name);
            return Ok(());
        }
        let now = engine.clock.now();
        if cursor.wake_at.is_some_and(|wake| wake > now) {
            let in_wait = matches!(
                engine.definition.state(&cursor.state).map(|s| &s.kind),
                Some(StateKind::Wait { .. })
            );
            // Woken while it was getting here: the Wait ends now.
            if in_wait && engine.take_wake(name) {
                engine.store.set_wake(name, cursor.version, now).await?;
                continue;
            }
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
        StateKind::Task { .. } => return run_task(engine, name, cursor, state).await,
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
    }
}

/// One attempt of a Task: written as scheduled, run, then its result or error handled.
async fn run_task(
    engine: &Engine,
    name: &str,
    cursor: &Cursor,
    state: &State,
) -> Result<Option<Step>, EngineError> {
    let StateKind::Task {
        resource,
        timeout_seconds,
        retry,
        catch,
        transition,
    } = &state.kind
    else {
        return Ok(None);
    };
    let raw = &cursor.state_input;
    let context = context(name, cursor).to_value();
    let parameters = io::select(state.io.input_path.as_ref(), raw, "InputPath").and_then(|input| {
        match &state.io.parameters {
            Some(template) => apply_template(template, &input, &context),
            None => Ok(input),
        }
    });
    let parameters = match parameters {
        Ok(parameters) => parameters,
        Err(err) => return Ok(Some(fail(cursor.version, &err, Vec::new()))),
    };
    let scheduled = [
        NewEvent::new(
            "TaskScheduled",
            Some(&cursor.state),
            json!({"resource": resource, "parameters": parameters}),
        ),
        NewEvent::new("TaskStarted", Some(&cursor.state), json!({})),
    ];
    let now = engine.clock.now();
    let Some(version) = engine
        .store
        .apply(name, cursor.version, &Update::Attempt, &scheduled, now)
        .await?
    else {
        return Ok(None);
    };
    let timeout = timeout_seconds.map(Duration::from_secs);
    let outcome = task::invoke(
        &engine.handlers,
        &engine.clock,
        resource,
        parameters,
        timeout,
    )
    .await;
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
            let event_type = if err.error == super::error::TIMEOUT {
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
            return Ok(Some(step));
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
            return Ok(Some(Step {
                version,
                update: Update::Retry {
                    retry_counts: counts,
                    wake_at,
                },
                events,
            }));
        }
    }
    if let Some(catcher) = retry::find_catcher(catch, &err.error) {
        let caught = json!({"Error": err.error, "Cause": err.cause});
        match io::place(catcher.result_path.as_ref(), raw, caught) {
            Ok(output) => {
                let transition = Transition::Next(catcher.next.clone());
                let mut step = leave(engine, cursor, state, &transition, output, events);
                step.version = version;
                return Ok(Some(step));
            }
            Err(place_err) => return Ok(Some(fail(version, &place_err, events))),
        }
    }
    Ok(Some(fail(version, &err, events)))
}
