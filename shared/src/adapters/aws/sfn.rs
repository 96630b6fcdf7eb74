//! `StepFunctions`: the orchestrator on AWS Step Functions (Standard workflows).
//!
//! One state machine runs every task; an execution is named after its task id, so the name
//! is the idempotency key: Step Functions refuses a second execution under a name for 90 days.
//!
//! What differs from the embedded engine:
//! - `describe` reads the execution and the newest page of its history (one call each); the
//!   current state and its input come from the latest `*StateEntered` event on that page.
//! - `transitions` is counted, not stored: exact while the whole history fits in that page,
//!   an estimate beyond (see [`HISTORY_PAGE`]). `history_events` is exact.
//! - `purge_finished` deletes nothing: Step Functions keeps a finished execution's history
//!   for 90 days and then drops it itself.
//! - `PENDING_REDRIVE` (a failed execution being redriven) is reported as running.

use async_trait::async_trait;
use aws_sdk_sfn::Client;
use aws_sdk_sfn::types::{ExecutionStatus as SfnStatus, HistoryEvent};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::{port_error, utc};
use crate::ports::{
    ExecutionEvent, ExecutionPage, ExecutionStatus, ExecutionView, Orchestrator, PageQuery,
    PortError, StartOutcome,
};

/// History events read per `describe`: enough to find the latest state entered (the longest
/// stretch without one is a Task state with its retries), small enough to stay one quick call.
pub const HISTORY_PAGE: i32 = 50;

/// A successful StartExecution whose execution started more than this before the call returned
/// an execution that already existed (same name and input while it runs). The margin covers
/// clock skew between this machine and AWS.
const REUSE_MARGIN: TimeDelta = TimeDelta::milliseconds(500);

/// The orchestrator on AWS Step Functions.
#[derive(Clone, Debug)]
pub struct StepFunctions {
    client: Client,
    state_machine_arn: String,
}

impl StepFunctions {
    /// An orchestrator running executions of the state machine `state_machine_arn`
    /// (`arn:aws:states:REGION:ACCOUNT:stateMachine:NAME`).
    pub fn new(client: Client, state_machine_arn: impl Into<String>) -> Self {
        Self {
            client,
            state_machine_arn: state_machine_arn.into(),
        }
    }

    /// The ARN of the execution `name`: `arn:aws:states:REGION:ACCOUNT:execution:MACHINE:name`.
    fn execution_arn(&self, name: &str) -> Result<String, PortError> {
        let arn = &self.state_machine_arn;
        let bad = || {
            PortError::Permanent(format!(
                "state machine ARN {arn:?} is not of the form arn:aws:states:REGION:ACCOUNT:stateMachine:NAME; fix the configured ARN"
            ))
        };
        let (account_part, machine) = arn.split_once(":stateMachine:").ok_or_else(bad)?;
        // A version or alias ARN (`...:stateMachine:NAME:1`) runs executions of NAME.
        let machine = machine
            .split(':')
            .next()
            .filter(|m| !m.is_empty())
            .ok_or_else(bad)?;
        Ok(format!("{account_part}:execution:{machine}:{name}"))
    }

    async fn describe_arn(&self, arn: &str) -> Result<Option<ExecutionView>, PortError> {
        let execution = match self
            .client
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_does_not_exist()) =>
            {
                return Ok(None);
            }
            Err(err) => return Err(port_error("states:DescribeExecution", err)),
        };
        let history = self
            .client
            .get_execution_history()
            .execution_arn(arn)
            .reverse_order(true)
            .max_results(HISTORY_PAGE)
            .send()
            .await
            .map_err(|err| port_error("states:GetExecutionHistory", err))?;
        let latest = LatestState::from_page(history.events(), history.next_token().is_some());
        Ok(Some(ExecutionView {
            name: execution.name().unwrap_or_default().to_owned(),
            status: execution_status(execution.status())?,
            input: execution.input().map(parse_json).unwrap_or(Value::Null),
            output: execution.output().map(parse_json),
            error: execution.error().map(str::to_owned),
            cause: execution.cause().map(str::to_owned),
            current_state: latest.state,
            state_input: latest.input,
            started_at: utc(execution.start_date()),
            stopped_at: execution.stop_date().map(utc),
            transitions: latest.transitions,
            history_events: latest.history_events,
        }))
    }
}

/// JSON as Step Functions returned it; text that is not JSON is kept as a string.
fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn execution_status(status: &SfnStatus) -> Result<ExecutionStatus, PortError> {
    Ok(match status {
        SfnStatus::Running | SfnStatus::PendingRedrive => ExecutionStatus::Running,
        SfnStatus::Succeeded => ExecutionStatus::Succeeded,
        SfnStatus::Failed => ExecutionStatus::Failed,
        SfnStatus::TimedOut => ExecutionStatus::TimedOut,
        SfnStatus::Aborted => ExecutionStatus::Aborted,
        other => {
            return Err(PortError::Permanent(format!(
                "Step Functions reported the execution status {:?}, which this version of taskrunner does not know; upgrade taskrunner",
                other.as_str()
            )));
        }
    })
}

fn status_filter(status: ExecutionStatus) -> SfnStatus {
    match status {
        ExecutionStatus::Running => SfnStatus::Running,
        ExecutionStatus::Succeeded => SfnStatus::Succeeded,
        ExecutionStatus::Failed => SfnStatus::Failed,
        ExecutionStatus::Aborted => SfnStatus::Aborted,
        ExecutionStatus::TimedOut => SfnStatus::TimedOut,
    }
}

/// One Step Functions history event in the port's terms; `state` carries the state entered
/// last, which the events after it (TaskScheduled, TaskFailed, ...) concern.
fn execution_event(event: &HistoryEvent, state: &mut Option<String>) -> ExecutionEvent {
    if let Some(details) = event.state_entered_event_details() {
        *state = Some(details.name().to_owned());
    }
    if let Some(details) = event.state_exited_event_details() {
        *state = Some(details.name().to_owned());
    }
    let failure = event
        .task_failed_event_details()
        .map(|d| (d.error(), d.cause()))
        .or_else(|| {
            event
                .task_timed_out_event_details()
                .map(|d| (d.error(), d.cause()))
        })
        .or_else(|| {
            event
                .execution_failed_event_details()
                .map(|d| (d.error(), d.cause()))
        })
        .or_else(|| {
            event
                .execution_aborted_event_details()
                .map(|d| (d.error(), d.cause()))
        })
        .or_else(|| {
            event
                .execution_timed_out_event_details()
                .map(|d| (d.error(), d.cause()))
        });
    ExecutionEvent {
        timestamp: utc(event.timestamp()),
        event_type: event.r#type().as_str().to_owned(),
        state: state.clone(),
        error: failure.and_then(|(error, _)| error).map(str::to_owned),
        cause: failure.and_then(|(_, cause)| cause).map(str::to_owned),
        output: event
            .task_succeeded_event_details()
            .and_then(|d| d.output())
            .map(parse_json),
    }
}

/// What the newest page of an execution's history says.
#[derive(Debug, Default, PartialEq)]
struct LatestState {
    state: Option<String>,
    input: Option<Value>,
    transitions: u64,
    history_events: u64,
}

impl LatestState {
    /// `events` is a page of the history (newest first, though the order is not relied on);
    /// `more` tells whether older events were left out.
    fn from_page(events: &[HistoryEvent], more: bool) -> Self {
        // Event ids run 1..=n in order, so the newest id is the number of events.
        let history_events = events.iter().map(|e| e.id()).max().unwrap_or(0).max(0) as u64;
        let entered: Vec<&HistoryEvent> = events
            .iter()
            .filter(|e| e.r#type().as_str().ends_with("StateEntered"))
            .collect();
        let newest = entered
            .iter()
            .filter(|e| e.state_entered_event_details().is_some())
            .max_by_key(|e| e.id());
        let details = newest.and_then(|e| e.state_entered_event_details());
        let transitions = if more && !events.is_empty() {
            // Estimate: the page's share of state entries, over the whole history.
            (entered.len() as u64 * history_events).div_ceil(events.len() as u64)
        } else {
            entered.len() as u64
        };
        LatestState {
            state: details.map(|d| d.name().to_owned()),
            input: details.and_then(|d| d.input()).map(parse_json),
            transitions,
            history_events,
        }
    }
}

#[async_trait]
impl Orchestrator for StepFunctions {
    /// Starts the execution `name`, unless one by that name exists: then its input is compared
    /// with `input` as JSON values (StartExecution alone cannot tell a repeat from a start:
    /// for the same name and input it answers with the running execution). Racing a start of
    /// the same name: when StartExecution answers `ExecutionAlreadyExists`, the inputs are
    /// compared the same way, and when it hands back an execution that started more than
    /// [`REUSE_MARGIN`] before the call, the answer is `AlreadyExists` too.
    async fn start(&self, name: &str, input: &Value) -> Result<StartOutcome, PortError> {
        if name.is_empty() || name.chars().count() > 80 {
            return Err(PortError::Permanent(format!(
                "execution name {name:?}: must be 1 to 80 characters"
            )));
        }
        let text = serde_json::to_string(input).map_err(|err| {
            PortError::Permanent(format!("execution input cannot be written as JSON: {err}"))
        })?;
        if let Some(existing) = self.describe(name).await? {
            return Ok(if existing.input == *input {
                StartOutcome::AlreadyExists
            } else {
                StartOutcome::Conflict
            });
        }
        let called_at = Utc::now();
        let result = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(text)
            .send()
            .await;
        match result {
            Ok(output) => {
                let started_at = utc(output.start_date());
                Ok(if started_at + REUSE_MARGIN < called_at {
                    StartOutcome::AlreadyExists
                } else {
                    StartOutcome::Started
                })
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                match self.describe(name).await? {
                    Some(existing) if existing.input == *input => Ok(StartOutcome::AlreadyExists),
                    Some(_) => Ok(StartOutcome::Conflict),
                    None => Err(PortError::Transient(format!(
                        "execution {name:?} exists but cannot be described yet; try again"
                    ))),
                }
            }
            Err(err) => Err(port_error("states:StartExecution", err)),
        }
    }

    async fn describe(&self, name: &str) -> Result<Option<ExecutionView>, PortError> {
        self.describe_arn(&self.execution_arn(name)?).await
    }

    /// Reads the whole history, a page of 1,000 events per call, oldest first.
    async fn history(&self, name: &str) -> Result<Vec<ExecutionEvent>, PortError> {
        let arn = self.execution_arn(name)?;
        let mut events = Vec::new();
        let mut state: Option<String> = None;
        let mut next_token: Option<String> = None;
        loop {
            let result = self
                .client
                .get_execution_history()
                .execution_arn(&arn)
                .max_results(1000)
                .set_next_token(next_token.take())
                .send()
                .await;
            let page = match result {
                Ok(page) => page,
                Err(err)
                    if err
                        .as_service_error()
                        .is_some_and(|e| e.is_execution_does_not_exist()) =>
                {
                    return Ok(Vec::new());
                }
                Err(err) => return Err(port_error("states:GetExecutionHistory", err)),
            };
            for event in page.events() {
                events.push(execution_event(event, &mut state));
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(events),
            }
        }
    }

    /// Lists with ListExecutions (newest first, as Step Functions sorts them), then describes
    /// each execution, one after another: `limit` bounds the calls made.
    async fn list(
        &self,
        status: Option<ExecutionStatus>,
        limit: usize,
    ) -> Result<Vec<ExecutionView>, PortError> {
        let mut arns = Vec::new();
        let mut next_token: Option<String> = None;
        while arns.len() < limit {
            let page_size = (limit - arns.len()).min(1000) as i32;
            let output = self
                .client
                .list_executions()
                .state_machine_arn(&self.state_machine_arn)
                .set_status_filter(status.map(status_filter))
                .max_results(page_size)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|err| port_error("states:ListExecutions", err))?;
            arns.extend(
                output
                    .executions()
                    .iter()
                    .map(|e| e.execution_arn().to_owned()),
            );
            match output.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        arns.truncate(limit);
        let mut views = Vec::with_capacity(arns.len());
        for arn in arns {
            // Gone between the list and the describe (past its 90 days): left out.
            if let Some(view) = self.describe_arn(&arn).await? {
                views.push(view);
            }
        }
        Ok(views)
    }

    /// One ListExecutions call (Step Functions' `nextToken` is the page token), then a
    /// describe per execution. `since` and `prefix` are applied to the listed page, so a page
    /// may hold fewer than `limit`; listing stops at the first execution older than `since`.
    async fn page(&self, query: &PageQuery) -> Result<ExecutionPage, PortError> {
        let output = self
            .client
            .list_executions()
            .state_machine_arn(&self.state_machine_arn)
            .set_status_filter(query.status.map(status_filter))
            .max_results(i32::try_from(query.limit.clamp(1, 1000)).unwrap_or(1000))
            .set_next_token(query.token.clone())
            .send()
            .await
            .map_err(|err| match &query.token {
                Some(_) if err.as_service_error().is_some_and(|e| e.is_invalid_token()) => {
                    PortError::Permanent("page token was not handed out by Step Functions or has expired; start again without it".into())
                }
                _ => port_error("states:ListExecutions", err),
            })?;
        let mut next_token = output
            .next_token()
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        let mut executions = Vec::new();
        for listed in output.executions() {
            let started_at = utc(listed.start_date());
            if query.since.is_some_and(|since| started_at < since) {
                next_token = None;
                break;
            }
            let wanted = query
                .prefix
                .as_deref()
                .is_none_or(|prefix| listed.name().starts_with(prefix));
            if !wanted {
                continue;
            }
            // Gone between the list and the describe (past its 90 days): left out.
            if let Some(view) = self.describe_arn(listed.execution_arn()).await? {
                executions.push(view);
            }
        }
        Ok(ExecutionPage {
            executions,
            next_token,
        })
    }

    async fn stop(&self, name: &str, error: &str, cause: &str) -> Result<(), PortError> {
        // Step Functions limits: error 256 characters, cause 32,768.
        let error: String = error.chars().take(256).collect();
        let cause: String = cause.chars().take(32_768).collect();
        let result = self
            .client
            .stop_execution()
            .execution_arn(self.execution_arn(name)?)
            .error(error)
            .cause(cause)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_does_not_exist()) =>
            {
                Err(PortError::Permanent(format!(
                    "no execution named {name:?} in state machine {}",
                    self.state_machine_arn
                )))
            }
            Err(err) => Err(port_error("states:StopExecution", err)),
        }
    }

    /// Deletes nothing and returns 0: Step Functions keeps a finished execution's history
    /// for 90 days and removes it itself; there is no API to delete one earlier.
    async fn purge_finished(&self, _before: DateTime<Utc>) -> Result<u64, PortError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
