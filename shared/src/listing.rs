//! Listing tasks: `GET /task-runner?status=&since=&prefix=&limit=&cursor=`, newest first.
//!
//! The orchestrator pages through executions (the SQLite index, or Step Functions'
//! ListExecutions); this module turns the raw query into typed values, reads each execution
//! as the task status the API shows, and wraps the orchestrator's page token in an opaque
//! cursor. A status filter is applied to what the orchestrator lists, so one answer may need
//! several orchestrator pages; it always stops at a page boundary, so the cursor is exact.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ports::{ExecutionStatus, PageQuery};
use crate::service::{ApiError, TaskService};
use crate::status::{TaskStatus, task_status};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 200;
/// Orchestrator pages read for one answer at most, so a rare status cannot scan everything.
const MAX_PAGES: usize = 20;

/// The query string as it arrives: every field text, parsed by [`ListQuery::parse`].
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawListQuery {
    /// `running`, `queued`, `succeeded`, `failed`, `timed_out`, `cancelled` or `error`.
    pub status: Option<String>,
    /// RFC 3339 time: only tasks submitted at or after it.
    pub since: Option<String>,
    /// Only task ids starting with this.
    pub prefix: Option<String>,
    /// Page size, 1 to 200.
    pub limit: Option<String>,
    /// The previous answer's `next_cursor`.
    pub cursor: Option<String>,
}

/// Which tasks a list answer shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Accepted, waiting for its turn.
    Queued,
    /// Started and not over: starting, preparing, running or finishing.
    Running,
    /// Over, with this status word.
    Ended(&'static str),
}

impl StatusFilter {
    const ENDED: [&'static str; 5] = ["succeeded", "failed", "timed_out", "cancelled", "error"];

    fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "queued" => Ok(Self::Queued),
            "running" => Ok(Self::Running),
            _ => Self::ENDED
                .iter()
                .find(|word| **word == text)
                .map(|word| Self::Ended(word))
                .ok_or_else(|| {
                    ApiError::new(
                        400,
                        format!(
                            "status {text:?}: must be one of running, queued, succeeded, failed, timed_out, cancelled, error"
                        ),
                    )
                }),
        }
    }

    fn execution_status(self) -> Option<ExecutionStatus> {
        match self {
            Self::Queued | Self::Running => Some(ExecutionStatus::Running),
            Self::Ended(_) => None,
        }
    }

    fn matches(self, status: &TaskStatus) -> bool {
        match self {
            Self::Queued => status.status == "queued",
            Self::Running => !status.done && status.status != "queued",
            Self::Ended(word) => status.done && status.status == word,
        }
    }
}

/// A parsed list query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// Only tasks with this status.
    pub status: Option<StatusFilter>,
    /// Only tasks submitted at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only task ids starting with this.
    pub prefix: Option<String>,
    /// Page size.
    pub limit: usize,
    /// The orchestrator's page token, out of the cursor.
    pub token: Option<String>,
}

impl ListQuery {
    /// Parses the query string; an error names the field and what it accepts.
    pub fn parse(raw: &RawListQuery) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::new(400, message);
        // An empty value is refused rather than read as absent: `?since=` is more likely a
        // script's unset variable than a wish for everything.
        let given = |field: &str, value: &Option<String>| match value.as_deref() {
            Some("") => Err(bad(format!(
                "{field}: must not be empty; give a value or leave the parameter out"
            ))),
            other => Ok(other.map(str::to_owned)),
        };
        let status = given("status", &raw.status)?
            .as_deref()
            .map(StatusFilter::parse)
            .transpose()?;
        let since = given("since", &raw.since)?
            .as_deref()
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|time| time.with_timezone(&Utc))
                    .map_err(|err| {
                        bad(format!(
                            "since {text:?}: {err}; give an RFC 3339 time such as 2026-01-31T09:00:00Z"
                        ))
                    })
            })
            .transpose()?;
        let limit = match given("limit", &raw.limit)?.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(bad(format!(
                        "limit {text:?}: must be a whole number from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        let token = given("cursor", &raw.cursor)?
            .as_deref()
            .map(|cursor| {
                URL_SAFE_NO_PAD
                    .decode(cursor)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "cursor {cursor:?}: not a cursor this server handed out; pass next_cursor from the previous answer, or leave it out for the first page"
                        ))
                    })
            })
            .transpose()?;
        Ok(Self {
            status,
            since,
            prefix: raw.prefix.clone().filter(|p| !p.is_empty()),
            limit,
            token,
        })
    }
}

/// One task in a list answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskSummary {
    /// The task id.
    pub task_id: String,
    /// The task file.
    pub task_name: String,
    /// As in `GET /task-runner/{task_id}`: `queued`, `starting`, `preparing`, `running`,
    /// `finishing`, `succeeded`, `failed`, `timed_out`, `cancelled` or `error`.
    pub status: String,
    /// The state-machine state the task is in (or ended in).
    pub state: Option<String>,
    /// The worker size.
    pub worker_size: String,
    /// When the request was accepted.
    pub submitted_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from start (or submission, before it started) to the end, or to now while it runs.
    pub duration_seconds: f64,
    /// The task that submitted this one, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
}

/// `GET /task-runner`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; `null` when there is no more.
    pub next_cursor: Option<String>,
}

fn summary(status: TaskStatus, parent: Option<String>, now: DateTime<Utc>) -> TaskSummary {
    let from = status.started_at.unwrap_or(status.submitted_at);
    let to = status.finished_at.unwrap_or(now);
    let millis = (to - from).num_milliseconds().max(0);
    TaskSummary {
        duration_seconds: millis as f64 / 1000.0,
        task_id: status.task_id,
        task_name: status.task_name,
        status: status.status,
        state: status.state,
        worker_size: status.worker_size,
        submitted_at: status.submitted_at,
        finished_at: status.finished_at,
        parent_task_id: parent,
    }
}

impl TaskService {
    /// A page of tasks, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<TaskList, ApiError> {
        let mut tasks = Vec::new();
        let mut token = query.token.clone();
        let now = Utc::now();
        for _ in 0..MAX_PAGES {
            let page_query = PageQuery {
                status: query.status.and_then(StatusFilter::execution_status),
                since: query.since,
                prefix: query.prefix.clone(),
                limit: query.limit - tasks.len(),
                token: token.clone(),
            };
            let page = self.orchestrator.page(&page_query).await.map_err(|err| {
                match (&page_query.token, err) {
                    (Some(_), crate::ports::PortError::Permanent(message)) => {
                        ApiError::new(400, format!("cursor: {message}"))
                    }
                    (_, err) => err.into(),
                }
            })?;
            for execution in &page.executions {
                let status = task_status(execution);
                if query.status.is_none_or(|filter| filter.matches(&status)) {
                    let parent = execution
                        .input
                        .pointer("/task/parent_task_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                    tasks.push(summary(status, parent, now));
                }
            }
            token = page.next_token;
            if token.is_none() || tasks.len() >= query.limit {
                break;
            }
        }
        Ok(TaskList {
            tasks,
            next_cursor: token.map(|token| URL_SAFE_NO_PAD.encode(token)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(field: &str, value: &str) -> RawListQuery {
        let mut raw = RawListQuery::default();
        let value = Some(value.to_owned());
        match field {
            "status" => raw.status = value,
            "since" => raw.since = value,
            "limit" => raw.limit = value,
            "cursor" => raw.cursor = value,
            _ => raw.prefix = value,
        }
        raw
    }

    #[test]
    fn bad_fields_are_named() {
        for (field, value) in [
            ("limit", "0"),
            ("limit", "201"),
            ("limit", "ten"),
            ("since", "yesterday"),
            ("status", "done"),
            ("cursor", "!!!"),
            ("cursor", ""),
            ("since", ""),
            ("limit", ""),
            ("status", ""),
        ] {
            let err = ListQuery::parse(&raw(field, value)).expect_err(value);
            assert_eq!(err.status, 400);
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let query = ListQuery::parse(&RawListQuery::default()).expect("empty query");
        assert_eq!(query.limit, DEFAULT_LIMIT);
        assert_eq!(
            ListQuery::parse(&raw("limit", "200")).expect("200").limit,
            200
        );
        let since = ListQuery::parse(&raw("since", "2026-01-31T09:00:00+01:00")).expect("since");
        assert_eq!(
            since.since.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-31T08:00:00+00:00")
        );
    }
}
