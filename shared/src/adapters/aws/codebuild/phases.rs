//! From a CodeBuild build (`buildStatus`, `phases`) to the task's phase.
//!
//! The task is the BUILD phase: everything before it is preparation (PRE_BUILD clones and
//! runs the startup script), and once BUILD has a status the task is over, even while the
//! build goes on in POST_BUILD to keep the worker for `terminate_on_completion: false`.

use aws_sdk_codebuild::primitives::DateTime as AwsDateTime;
use aws_sdk_codebuild::types::{Build, BuildPhase, BuildPhaseType, StatusType};
use chrono::{DateTime, Utc};

use crate::ports::{Outcome, TaskEnd, TaskPhase, WorkerStatus};

/// The runner's line with the task's exit code.
const EXIT_MARKER: &str = "[taskrunner] exit_code=";
/// The runner's line saying why preparing failed.
const ERROR_MARKER: &str = "[taskrunner] error: ";

/// What the runner wrote in the log that the build record does not hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogHints {
    /// From the last `[taskrunner] exit_code=N` line.
    pub exit_code: Option<i32>,
    /// From the last `[taskrunner] error: ...` line.
    pub error: Option<String>,
}

impl LogHints {
    /// Reads the runner's marker lines out of a log tail.
    pub fn parse(log: &str) -> Self {
        let mut hints = Self::default();
        for line in log.lines() {
            let line = line.trim_end();
            if let Some(code) = line.strip_prefix(EXIT_MARKER) {
                hints.exit_code = code.trim().parse().ok();
            } else if let Some(error) = line.strip_prefix(ERROR_MARKER) {
                hints.error = Some(error.to_owned());
            }
        }
        hints
    }
}

/// The value of an environment variable the build was started with.
pub fn env_var<'a>(build: &'a Build, name: &str) -> Option<&'a str> {
    build
        .environment()?
        .environment_variables()
        .iter()
        .find(|v| v.name() == name)
        .map(|v| v.value())
}

/// An AWS timestamp as a chrono one.
pub fn to_chrono(time: &AwsDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos())
}

/// Whether the status needs the log: a failed task (exit code) or a failed preparation
/// (the runner's error line).
pub fn needs_log(build: &Build) -> bool {
    build
        .phases()
        .iter()
        .any(|p| p.phase_status() == Some(&StatusType::Failed))
}

fn is_preparation(kind: &BuildPhaseType) -> bool {
    matches!(
        kind,
        BuildPhaseType::Submitted
            | BuildPhaseType::Queued
            | BuildPhaseType::Provisioning
            | BuildPhaseType::DownloadSource
            | BuildPhaseType::Install
            | BuildPhaseType::PreBuild
    )
}

fn phase_name(phase: &BuildPhase) -> &str {
    phase
        .phase_type()
        .map(BuildPhaseType::as_str)
        .unwrap_or("?")
}

/// The task's phase and whether the build still runs.
pub fn worker_status(build: &Build, hints: &LogHints, now: DateTime<Utc>) -> WorkerStatus {
    WorkerStatus {
        task: task_phase(build, hints, now),
        worker_alive: build.build_status() == Some(&StatusType::InProgress),
    }
}

fn task_phase(build: &Build, hints: &LogHints, now: DateTime<Utc>) -> TaskPhase {
    let ended_at = |phase: Option<&BuildPhase>| {
        phase
            .and_then(BuildPhase::end_time)
            .or(build.end_time())
            .and_then(to_chrono)
            .unwrap_or(now)
    };
    // A preparation phase that did not succeed ends the task before it ran.
    let failed_preparation = build.phases().iter().find(|p| {
        p.phase_type().is_some_and(is_preparation)
            && p.phase_status()
                .is_some_and(|s| *s != StatusType::Succeeded)
    });
    if let Some(phase) = failed_preparation {
        let status = phase.phase_status().cloned().unwrap_or(StatusType::Failed);
        let mut end = ended(
            &status,
            None,
            Some(preparation_reason(phase, &status, hints)),
            None,
            ended_at(Some(phase)),
        );
        // The task never ran: a failed clone or startup script is an error, not a failure.
        if end.outcome == Outcome::Failed {
            end.outcome = Outcome::Error;
        }
        return TaskPhase::Ended(end);
    }
    let task = build
        .phases()
        .iter()
        .find(|p| p.phase_type() == Some(&BuildPhaseType::Build));
    let in_progress = build.build_status() == Some(&StatusType::InProgress);
    match task {
        Some(phase) => {
            let started_at = phase.start_time().and_then(to_chrono);
            match phase.phase_status() {
                Some(status) => TaskPhase::Ended(ended(
                    status,
                    hints.exit_code,
                    None,
                    started_at,
                    ended_at(Some(phase)),
                )),
                None if in_progress => TaskPhase::Running {
                    started_at: started_at.unwrap_or(now),
                },
                // The build ended while BUILD had no status of its own.
                None => TaskPhase::Ended(ended(
                    build.build_status().unwrap_or(&StatusType::Fault),
                    hints.exit_code,
                    None,
                    started_at,
                    ended_at(None),
                )),
            }
        }
        None if in_progress => {
            let preparing = build.phases().iter().any(|p| {
                matches!(
                    p.phase_type(),
                    Some(
                        BuildPhaseType::Provisioning
                            | BuildPhaseType::DownloadSource
                            | BuildPhaseType::Install
                            | BuildPhaseType::PreBuild
                    )
                )
            });
            if preparing {
                TaskPhase::Preparing
            } else {
                TaskPhase::Pending
            }
        }
        None => {
            let status = build.build_status().cloned().unwrap_or(StatusType::Fault);
            let reason = match status {
                StatusType::Succeeded => {
                    "the build succeeded without running the task (no BUILD phase)".to_owned()
                }
                _ => format!("the build ended {} before the task ran", status.as_str()),
            };
            let outcome_status = if status == StatusType::Succeeded {
                StatusType::Fault
            } else {
                status
            };
            TaskPhase::Ended(ended(
                &outcome_status,
                None,
                Some(reason),
                None,
                ended_at(None),
            ))
        }
    }
}

/// How a phase status reads as the task's end.
fn ended(
    status: &StatusType,
    exit_code: Option<i32>,
    reason: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: DateTime<Utc>,
) -> TaskEnd {
    let (outcome, exit_code, default_reason) = match status {
        StatusType::Succeeded => (Outcome::Succeeded, Some(0), None),
        StatusType::Failed => (
            Outcome::Failed,
            exit_code,
            Some(match exit_code {
                Some(code) => format!("the task exited with code {code}"),
                None => "the task failed (no exit code in the log)".to_owned(),
            }),
        ),
        StatusType::TimedOut => (
            Outcome::TimedOut,
            None,
            Some("the build ran past its timeout and CodeBuild stopped it".to_owned()),
        ),
        StatusType::Stopped => (
            Outcome::Cancelled,
            None,
            Some("the build was stopped".to_owned()),
        ),
        other => (
            Outcome::Error,
            None,
            Some(format!(
                "CodeBuild reported {} (a service or infrastructure fault)",
                other.as_str()
            )),
        ),
    };
    TaskEnd {
        outcome,
        exit_code,
        reason: reason.or(default_reason),
        started_at,
        finished_at,
    }
}

/// Why preparing failed: the runner's own error line if the log has one, and CodeBuild's
/// context message for the phase.
fn preparation_reason(phase: &BuildPhase, status: &StatusType, hints: &LogHints) -> String {
    let contexts: Vec<String> = phase
        .contexts()
        .iter()
        .filter_map(|c| match (c.status_code(), c.message()) {
            (Some(code), Some(message)) if !message.is_empty() => {
                Some(format!("{code}: {message}"))
            }
            (Some(code), _) => Some(code.to_owned()),
            (None, Some(message)) => Some(message.to_owned()),
            (None, None) => None,
        })
        .collect();
    let mut reason = format!(
        "preparing the worker failed in {} ({})",
        phase_name(phase),
        status.as_str()
    );
    if let Some(error) = &hints.error {
        reason.push_str(": ");
        reason.push_str(error);
    }
    if !contexts.is_empty() {
        reason.push_str("; CodeBuild: ");
        reason.push_str(&contexts.join("; "));
    }
    reason
}
