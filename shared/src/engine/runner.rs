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

/// A step taken: the update and its events.
struct Step {
    update: Update,
    events: Vec<NewEvent>,
}

/// What taking a step came to.
enum Taken {
    /// A step to write.
    Step(Step),
    /// The step wrote the execution's wake-up time itself, at the same version.
    Sleeps(DateTime<Utc>),
    /// The step wrote the execution otherwise, or found it moved on: read it back.
    Moved,
}

/// At most this many steps wait in memory to be written together (a definition may loop
/// through Pass and Choice states alone).
const MAX_PENDING: usize = 64;

/// An execution being run: where it is, and the steps taken but not written yet. A step
/// that calls nothing (Choice, Pass, Succeed, Fail, a Task's result handled, a Wait entered)
/// is written with what follows it, up to the next Task attempt, sleep or end: lost to a
/// crash, it is taken again from the last written step, as it depends on nothing else.
struct Run<'a> {
    engine: &'a Engine,
    name: &'a str,
    /// Where the execution is, with the pending steps taken.
    cursor: Cursor,
    /// The version on disk; the cursor's is this plus the pending updates.
    written: i64,
    pending: Vec<Update>,
    events: Vec<NewEvent>,
    /// When the first pending step was taken: the pending steps are written at that time.
    since: Option<DateTime<Utc>>,
    /// The execution's wait, read with the cursor; `None` once a step was taken since.
    wait: Option<Option<Wait>>,
}

impl<'a> Run<'a> {
    /// Reads where execution `name` is; `None` when it does not exist.
    async fn read(engine: &'a Engine, name: &'a str) -> Result<Option<Self>, EngineError> {
        Ok(engine
            .store
            .position(name)
            .await?
            .map(|(cursor, wait)| Self {
                engine,
                name,
                written: cursor.version,
                cursor,
                pending: Vec::new(),
                events: Vec::new(),
                since: None,
                wait: Some(wait),
            }))
    }

    /// Takes `step`, in memory.
    fn push(&mut self, step: Step) {
        let at = *self.since.get_or_insert_with(|| self.engine.clock.now());
        self.wait = None;
        self.cursor.advance(&step.update, at);
        self.pending.push(step.update);
        self.events.extend(step.events);
    }

    /// Writes the pending steps (with `wait`, opened by the last of them, a token attempt);
    /// false when the execution moved on, and they were dropped.
    async fn flush(&mut self, wait: Option<NewWait>) -> Result<bool, EngineError> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let at = self.since.take().unwrap_or_else(|| self.engine.clock.now());
        let updates = std::mem::take(&mut self.pending);
        let events = std::mem::take(&mut self.events);
        let store = &self.engine.store;
        let written = match wait {
            Some(wait) => {
                store
                    .begin_wait(self.name, self.written, updates, events, wait, at)
                    .await?
            }
            None => {
                store
                    .apply(self.name, self.written, updates, events, at)
                    .await?
            }
        };
        match written {
            Some(version) => {
                self.written = version;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Runs execution `name` until it ends or sleeps.
pub async fn run(engine: &Engine, name: &str) -> Result<(), EngineError> {
    let Some(mut run) = Run::read(engine, name).await? else {
        return Ok(());
    };
    loop {
        let cursor = &run.cursor;
        if cursor.status != ExecutionStatus::Running
            || cursor.wake_at.is_some_and(|wake| wake > engine.clock.now())
        {
            run.flush(None).await?;
            return Ok(());
        }
        if run.pending.len() >= MAX_PENDING && !run.flush(None).await? {
            // Moved on (stopped): read where it is now.
            let Some(fresh) = Run::read(engine, name).await? else {
                return Ok(());
            };
            run = fresh;
            continue;
        }
        let cursor = run.cursor.clone();
        let step = match engine.definition.state(&cursor.state) {
            Some(state) => take_step(&mut run, &cursor, state).await?,
            None => {
                let err = StateError::runtime(format!(
                    "state {:?} is not in the definition; it was removed while the execution ran",
                    cursor.state
                ));
                Taken::Step(fail(&err, Vec::new()))
            }
        };
        match step {
            Taken::Step(step) => run.push(step),
            Taken::Sleeps(wake_at) => run.cursor.wake_at = Some(wake_at),
            Taken::Moved => {
                let Some(fresh) = Run::read(engine, name).await? else {
                    return Ok(());
                };
                run = fresh;
            }
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
    Step { update, events }
}

/// Ends the execution as failed with `err`, after `events`.
fn fail(err: &StateError, mut events: Vec<NewEvent>) -> Step {
    events.push(NewEvent::new(
        "ExecutionFailed",
        None,
        json!({"error": err.error, "cause": err.cause}),
    ));
    Step {
        update: Update::Finish {
            status: ExecutionStatus::Failed,
            output: None,
            error: Some(err.error.clone()),
            cause: Some(err.cause.clone()),
        },
        events,
    }
}

/// The next step of the execution at `cursor`, in `state`. A Task's attempt is written
/// here, with the steps pending before it, before the task is called.
async fn take_step(
    run: &mut Run<'_>,
    cursor: &Cursor,
    state: &State,
) -> Result<Taken, EngineError> {
    let (engine, name) = (run.engine, run.name);
    let raw = &cursor.state_input;
    let step = match &state.kind {
        StateKind::Task { resource, .. } => {
            // With steps pending, the state was just entered: a wait on disk is an earlier
            // state's, closed by the write of the attempt.
            if run.pending.is_empty() && task::waits_for_token(resource) {
                let wait = match run.wait.take() {
                    Some(wait) => wait,
                    None => engine.store.wait(name).await?,
                };
                if let Some(wait) = wait
                    && !wait.closed
                    && (wait.invoked || wait.answer.is_some())
                {
                    return resume_wait(engine, name, cursor, state, wait).await;
                }
            }
            // A token attempt cut off before its handler returned starts again, with a
            // new token (at least once, as any Task running when the process died).
            return run_task(run, cursor, state).await;
        }
        StateKind::Wait { wait, transition } => match cursor.wake_at {
            Some(_) => match io::select(state.io.input_path.as_ref(), raw, "InputPath")
                .and_then(|input| io::select(state.io.output_path.as_ref(), &input, "OutputPath"))
            {
                Ok(output) => leave(engine, cursor, state, transition, output, Vec::new()),
                Err(err) => fail(&err, Vec::new()),
            },
            // The deadline could not be computed on entry: fail with the reason.
            None => match deadline(state, wait, raw, engine.clock.now()) {
                Ok(wake_at) => {
                    if !run.flush(None).await? {
                        return Ok(Taken::Moved);
                    }
                    let slept = engine.store.set_wake(name, run.written, wake_at).await?;
                    return Ok(slept.map_or(Taken::Moved, Taken::Sleeps));
                }
                Err(err) => fail(&err, Vec::new()),
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
                Err(err) => fail(&err, Vec::new()),
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
                Err(err) => fail(&err, Vec::new()),
            }
        }
        StateKind::Succeed => {
            let output = io::select(state.io.input_path.as_ref(), raw, "InputPath")
                .and_then(|input| io::select(state.io.output_path.as_ref(), &input, "OutputPath"));
            match output {
                Ok(output) => leave(engine, cursor, state, &Transition::End, output, Vec::new()),
                Err(err) => fail(&err, Vec::new()),
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
            fail(&err, Vec::new())
        }
    };
    Ok(Taken::Step(step))
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
) -> Result<Taken, EngineError> {
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
            let slept = engine
                .store
                .set_wake(name, cursor.version, wait.deadline())
                .await?;
            return Ok(slept.map_or(Taken::Moved, Taken::Sleeps));
        }
    };
    Ok(Taken::Step(settle(engine, name, cursor, state, outcome)))
}

/// One attempt of a Task: written as scheduled, run, then its result or error handled. A
/// `.waitForTaskToken` attempt gets a fresh token, stored with the attempt, and waits for
/// it once its handler has returned.
async fn run_task(run: &mut Run<'_>, cursor: &Cursor, state: &State) -> Result<Taken, EngineError> {
    let (engine, name) = (run.engine, run.name);
    let StateKind::Task {
        resource,
        timeout,
        heartbeat,
        ..
    } = &state.kind
    else {
        return Ok(Taken::Moved);
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
        Err(err) => return Ok(Taken::Step(fail(&err, Vec::new()))),
    };
    let shown = match &token {
        Some(token) => redact(&parameters, token),
        None => parameters.clone(),
    };
    let scheduled = vec![
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
    let wait = token.as_ref().map(|token| NewWait {
        token: token.clone(),
        timeout_at: after_seconds(
            engine.clock.now(),
            timeout_seconds.unwrap_or(DEFAULT_TOKEN_TIMEOUT_SECONDS),
        ),
        heartbeat_seconds,
    });
    // The attempt is written (with the steps before it) before the task is called.
    run.push(Step {
        update: Update::Attempt,
        events: scheduled,
    });
    if !run.flush(wait).await? {
        return Ok(Taken::Moved);
    }
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
        let wake_at = engine
            .store
            .waiting(name, token, &events, engine.clock.now())
            .await?;
        return Ok(wake_at.map_or(Taken::Moved, Taken::Sleeps));
    }
    Ok(Taken::Step(settle(engine, name, cursor, state, outcome)))
}

/// A Task attempt's result or error, handled: into the next state, a retry, a catcher, or
/// the execution's failure.
fn settle(
    engine: &Engine,
    name: &str,
    cursor: &Cursor,
    state: &State,
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
        return fail(&err, Vec::new());
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
        Ok(output) => return leave(engine, cursor, state, transition, output, events),
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
                leave(engine, cursor, state, &transition, output, events)
            }
            Err(place_err) => fail(&place_err, events),
        };
    }
    fail(&err, events)
}
