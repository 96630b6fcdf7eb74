//! SQLite persistence: one row per execution (where it is, with what data, until when it
//! sleeps) and its history events. Every step of an execution is one transaction, guarded
//! by a version number so a stopped or concurrently moved execution is never overwritten.
//!
//! The connections live on their own threads ([`crate::sqlite::Db`]): writes are
//! group-committed and on disk when they return, reads use a second connection.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

mod history;
mod page;
mod waits;

use history::append_events;
pub use waits::{Answer, Lookup, NewWait, Wait};

use super::error::EngineError;
use crate::ports::{ExecutionStatus, ExecutionView, StartOutcome};
use crate::sqlite::Db;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS executions (
    name TEXT PRIMARY KEY,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    current_state TEXT NOT NULL,
    state_input TEXT NOT NULL,
    state_entered_at INTEGER NOT NULL,
    retry_counts TEXT NOT NULL DEFAULT '[]',
    wake_at INTEGER,
    output TEXT,
    error TEXT,
    cause TEXT,
    started_at INTEGER NOT NULL,
    stopped_at INTEGER,
    transitions INTEGER NOT NULL DEFAULT 0,
    history_events INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status, wake_at);
-- A prefix of executions_by_start_name, which serves every query it served.
DROP INDEX IF EXISTS executions_by_start;
CREATE INDEX IF NOT EXISTS executions_by_start_name ON executions (started_at, name);
CREATE INDEX IF NOT EXISTS executions_by_status_start_name ON executions (status, started_at, name);
CREATE TABLE IF NOT EXISTS history (
    execution TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    state TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY (execution, seq)
);
";

/// A history event, as Step Functions would list it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEvent {
    /// Position in the execution's history, from 1.
    pub seq: u64,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Such as `TaskStateEntered`.
    pub event_type: String,
    /// The state it concerns, if any.
    pub state: Option<String>,
    /// Input, output, error and cause, as relevant.
    pub detail: Value,
}

/// An event about to be written.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Such as `TaskStateEntered`.
    pub event_type: String,
    /// The state it concerns, if any.
    pub state: Option<String>,
    /// Details.
    pub detail: Value,
}

impl NewEvent {
    /// An event of `event_type` about `state`.
    pub fn new(event_type: impl Into<String>, state: Option<&str>, detail: Value) -> Self {
        Self {
            event_type: event_type.into(),
            state: state.map(str::to_string),
            detail,
        }
    }
}

/// Where a running execution is: what a runner needs to take its next step.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    /// Its status.
    pub status: ExecutionStatus,
    /// The execution input.
    pub input: Value,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The current state.
    pub state: String,
    /// The raw input of the current state.
    pub state_input: Value,
    /// When the current state was entered.
    pub entered_at: DateTime<Utc>,
    /// Retries done so far in this state, per retrier.
    pub retry_counts: Vec<u32>,
    /// Not to be run before this (a Wait's deadline or a retry's delay).
    pub wake_at: Option<DateTime<Utc>>,
    /// Bumped by every write; a write based on an older version is refused.
    pub version: i64,
}

impl Cursor {
    /// Where the execution is once `update` is written at `now`, as [`Store::apply`] writes
    /// it: a runner moves on without reading the execution back after each step.
    pub fn advance(&mut self, update: &Update, now: DateTime<Utc>) {
        match update {
            Update::Enter {
                state,
                input,
                wake_at,
            } => {
                self.state.clone_from(state);
                self.state_input = input.clone();
                self.entered_at = from_ms(ms(now));
                self.retry_counts.clear();
                self.wake_at = wake_at.map(|wake| from_ms(ms(wake)));
            }
            Update::Attempt => self.wake_at = None,
            Update::Retry {
                retry_counts,
                wake_at,
            } => {
                self.retry_counts.clone_from(retry_counts);
                self.wake_at = Some(from_ms(ms(*wake_at)));
            }
            Update::Finish { status, .. } => {
                self.status = *status;
                self.wake_at = None;
            }
        }
        self.version += 1;
    }
}

/// A change to an execution, written with its history events.
#[derive(Clone, Debug)]
pub enum Update {
    /// A transition into `state` (a new transition; retry counters reset).
    Enter {
        /// The state entered.
        state: String,
        /// Its raw input.
        input: Value,
        /// Its deadline, for a Wait.
        wake_at: Option<DateTime<Utc>>,
    },
    /// A task attempt starts now: the retry delay, if any, is over.
    Attempt,
    /// The task will be retried at `wake_at` (counted as a transition, as AWS bills it).
    Retry {
        /// Retries per retrier, including this one.
        retry_counts: Vec<u32>,
        /// When to retry.
        wake_at: DateTime<Utc>,
    },
    /// The execution ends.
    Finish {
        /// Its final status.
        status: ExecutionStatus,
        /// Its output, when it succeeded.
        output: Option<Value>,
        /// Its error, when it failed.
        error: Option<String>,
        /// Its cause, when it failed.
        cause: Option<String>,
    },
}

/// The execution database.
pub struct Store {
    db: Db,
}

fn ms(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

fn from_ms(value: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(value).unwrap_or(DateTime::UNIX_EPOCH)
}

fn status_text(status: ExecutionStatus) -> &'static str {
    match status {
        ExecutionStatus::Running => "RUNNING",
        ExecutionStatus::Succeeded => "SUCCEEDED",
        ExecutionStatus::Failed => "FAILED",
        ExecutionStatus::Aborted => "ABORTED",
        ExecutionStatus::TimedOut => "TIMED_OUT",
    }
}

fn parse_status(text: &str) -> Result<ExecutionStatus, EngineError> {
    serde_json::from_value(Value::String(text.to_string()))
        .map_err(|_| EngineError::Corrupt(format!("unknown execution status {text:?}")))
}

fn parse_json(text: &str) -> Result<Value, EngineError> {
    serde_json::from_str(text).map_err(|e| EngineError::Corrupt(format!("stored JSON: {e}")))
}

/// The names of the running executions due at `?1`, oldest first. Two ranges of
/// `executions_by_status`, so only the due ones are read: with the OR in one WHERE, SQLite
/// walks every running execution (and reads its row) instead.
const DUE_QUERY: &str = "SELECT name FROM (
         SELECT name, started_at FROM executions WHERE status = 'RUNNING' AND wake_at IS NULL
         UNION ALL
         SELECT name, started_at FROM executions WHERE status = 'RUNNING' AND wake_at <= ?1
     ) ORDER BY started_at";

/// The earliest wake-up time of a running execution, in milliseconds.
fn earliest_wake(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MIN(wake_at) FROM executions WHERE status = 'RUNNING' AND wake_at IS NOT NULL",
    )?
    .query_row([], |row| row.get(0))
}

/// The SELECT of a [`Cursor`], by name.
const CURSOR_QUERY: &str = "SELECT status, input, started_at, current_state, state_input, state_entered_at, retry_counts, wake_at, version
     FROM executions WHERE name = ?1";

type CursorRow = (
    String,
    String,
    i64,
    String,
    String,
    i64,
    String,
    Option<i64>,
    i64,
);

fn read_cursor(conn: &Connection, name: &str) -> rusqlite::Result<Option<CursorRow>> {
    conn.prepare_cached(CURSOR_QUERY)?
        .query_row([name], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
            ))
        })
        .optional()
}

fn cursor_from(row: CursorRow) -> Result<Cursor, EngineError> {
    let (status, input, started, state, state_input, entered, retries, wake, version) = row;
    let retry_counts = serde_json::from_str(&retries)
        .map_err(|e| EngineError::Corrupt(format!("retry counts: {e}")))?;
    Ok(Cursor {
        status: parse_status(&status)?,
        input: parse_json(&input)?,
        started_at: from_ms(started),
        state,
        state_input: parse_json(&state_input)?,
        entered_at: from_ms(entered),
        retry_counts,
        wake_at: wake.map(from_ms),
        version,
    })
}

/// Writes `update` at `version`; the number of rows changed (0: it moved on).
fn apply_update(
    tx: &Connection,
    name: &str,
    version: i64,
    update: &Update,
    now: DateTime<Utc>,
) -> rusqlite::Result<usize> {
    match update {
        Update::Enter {
            state,
            input,
            wake_at,
        } => tx
            .prepare_cached(
                "UPDATE executions SET current_state = ?3, state_input = ?4, state_entered_at = ?5,
                 wake_at = ?6, retry_counts = '[]', transitions = transitions + 1, version = version + 1
                 WHERE name = ?1 AND version = ?2 AND status = 'RUNNING'",
            )?
            .execute(params![
                name,
                version,
                state,
                input.to_string(),
                ms(now),
                wake_at.map(ms)
            ]),
        Update::Attempt => tx
            .prepare_cached(
                "UPDATE executions SET wake_at = NULL, version = version + 1
                 WHERE name = ?1 AND version = ?2 AND status = 'RUNNING'",
            )?
            .execute(params![name, version]),
        Update::Retry {
            retry_counts,
            wake_at,
        } => tx
            .prepare_cached(
                "UPDATE executions SET retry_counts = ?3, wake_at = ?4, transitions = transitions + 1,
                 version = version + 1 WHERE name = ?1 AND version = ?2 AND status = 'RUNNING'",
            )?
            .execute(params![
                name,
                version,
                serde_json::to_string(retry_counts).unwrap_or_else(|_| "[]".into()),
                ms(*wake_at)
            ]),
        Update::Finish {
            status,
            output,
            error,
            cause,
        } => tx
            .prepare_cached(
                "UPDATE executions SET status = ?3, output = ?4, error = ?5, cause = ?6, stopped_at = ?7,
                 wake_at = NULL, version = version + 1 WHERE name = ?1 AND version = ?2 AND status = 'RUNNING'",
            )?
            .execute(params![
                name,
                version,
                status_text(*status),
                output.as_ref().map(Value::to_string),
                error,
                cause,
                ms(now)
            ]),
    }
}

/// Writes `updates` in order, the first at `version` and each one version on; `None` when
/// the execution moved on, else the new version. A wait open in the state being left is
/// closed: it answers nothing any more.
fn apply_updates(
    tx: &Connection,
    name: &str,
    version: i64,
    updates: &[Update],
    now: DateTime<Utc>,
) -> Result<Option<i64>, EngineError> {
    let mut at = version;
    for update in updates {
        if apply_update(tx, name, at, update, now)? == 0 {
            if at == version {
                return Ok(None);
            }
            // The first update held the row at `version`; nothing else writes it in between.
            return Err(EngineError::Corrupt(format!(
                "execution {name:?} changed in the middle of one write"
            )));
        }
        at += 1;
    }
    if updates
        .iter()
        .any(|update| !matches!(update, Update::Attempt))
    {
        waits::close(tx, name)?;
    }
    Ok(Some(at))
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let db = Db::open(path, "engine-db", |conn| {
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(waits::SCHEMA)
        })?;
        Ok(Self { db })
    }

    /// Creates an execution in `first_state`, unless one with this name exists; on disk when
    /// it returns. The steps that follow are written relaxed (see [`Db::write_relaxed`]).
    pub async fn insert(
        &self,
        name: &str,
        input: &Value,
        first_state: &str,
        wake_at: Option<DateTime<Utc>>,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<StartOutcome, EngineError> {
        let (name, input, first_state, events) = (
            name.to_owned(),
            input.clone(),
            first_state.to_owned(),
            events.to_vec(),
        );
        self.db
            .write(move |tx| {
                let existing: Option<String> = tx
                    .prepare_cached("SELECT input FROM executions WHERE name = ?1")?
                    .query_row([&name], |row| row.get(0))
                    .optional()?;
                if let Some(existing) = existing {
                    return Ok(if parse_json(&existing)? == input {
                        StartOutcome::AlreadyExists
                    } else {
                        StartOutcome::Conflict
                    });
                }
                tx.prepare_cached(
                    "INSERT INTO executions (name, input, status, current_state, state_input, state_entered_at, wake_at, started_at, transitions, version)
                     VALUES (?1, ?2, 'RUNNING', ?3, ?2, ?4, ?5, ?4, 1, 1)",
                )?
                .execute(params![name, input.to_string(), first_state, ms(now), wake_at.map(ms)])?;
                append_events(tx, &name, &events, now)?;
                Ok(StartOutcome::Started)
            })
            .await
    }

    /// Where execution `name` is, if it exists.
    pub async fn cursor(&self, name: &str) -> Result<Option<Cursor>, EngineError> {
        let name = name.to_owned();
        let row = self.db.read(move |conn| read_cursor(conn, &name)).await?;
        row.map(cursor_from).transpose()
    }

    /// Writes `updates` (in order, each one version on) and `events` if the execution is
    /// still RUNNING at `version`, in one transaction; returns the new version, or `None`
    /// when it moved on (stopped, or another step won).
    pub async fn apply(
        &self,
        name: &str,
        version: i64,
        updates: Vec<Update>,
        events: Vec<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, EngineError> {
        let name = name.to_owned();
        self.db
            .write_relaxed(move |tx| {
                let Some(version) = apply_updates(tx, &name, version, &updates, now)? else {
                    return Ok(None);
                };
                append_events(tx, &name, &events, now)?;
                Ok(Some(version))
            })
            .await
    }

    /// Moves the wake-up time of `name` to `wake_at` if it is still at `version`: the
    /// wake-up time as kept (in milliseconds), or `None` when it moved on.
    pub async fn set_wake(
        &self,
        name: &str,
        version: i64,
        wake_at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, EngineError> {
        let name = name.to_owned();
        self.db
            .write_relaxed(move |tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE executions SET wake_at = ?3 WHERE name = ?1 AND version = ?2 AND status = 'RUNNING'",
                    )?
                    .execute(params![name, version, ms(wake_at)])?;
                Ok((changed > 0).then(|| from_ms(ms(wake_at))))
            })
            .await
    }

    /// Names of running executions due now (no wake-up time, or one that has passed).
    pub async fn runnable(&self, now: DateTime<Utc>) -> Result<Vec<String>, EngineError> {
        Ok(self.due(now).await?.0)
    }

    /// The earliest wake-up time of a running execution, if any sleeps.
    pub async fn earliest_wake(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        let earliest: Option<i64> = self.db.read(earliest_wake).await?;
        Ok(earliest.map(from_ms))
    }

    /// What the scheduler looks at, in one read: the names of running executions due at
    /// `now`, and the earliest wake-up time after `now`.
    pub async fn due(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, Option<DateTime<Utc>>), EngineError> {
        let (names, earliest) = self
            .db
            .read(move |conn| {
                let names = conn
                    .prepare_cached(DUE_QUERY)?
                    .query_map([ms(now)], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                let earliest: Option<i64> = conn
                    .prepare_cached(
                        "SELECT MIN(wake_at) FROM executions WHERE status = 'RUNNING' AND wake_at > ?1",
                    )?
                    .query_row([ms(now)], |row| row.get(0))?;
                Ok::<_, rusqlite::Error>((names, earliest))
            })
            .await?;
        Ok((names, earliest.map(from_ms)))
    }

    /// Whether any execution is running.
    pub async fn any_running(&self) -> Result<bool, EngineError> {
        let count: i64 = self
            .db
            .read(|conn| {
                conn.prepare_cached("SELECT COUNT(*) FROM executions WHERE status = 'RUNNING'")?
                    .query_row([], |row| row.get(0))
            })
            .await?;
        Ok(count > 0)
    }

    /// Aborts a running execution; `false` when it was not running.
    pub async fn abort(
        &self,
        name: &str,
        error: &str,
        cause: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, EngineError> {
        let (name, error, cause) = (name.to_owned(), error.to_owned(), cause.to_owned());
        self.db
            .write(move |tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE executions SET status = 'ABORTED', error = ?2, cause = ?3, stopped_at = ?4, wake_at = NULL,
                         version = version + 1 WHERE name = ?1 AND status = 'RUNNING'",
                    )?
                    .execute(params![name, error, cause, ms(now)])?;
                if changed == 0 {
                    return Ok(false);
                }
                waits::close(tx, &name)?;
                let event = NewEvent::new(
                    "ExecutionAborted",
                    None,
                    serde_json::json!({"error": error, "cause": cause}),
                );
                append_events(tx, &name, &[event], now)?;
                Ok(true)
            })
            .await
    }

    /// Whether an execution named `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, EngineError> {
        let name = name.to_owned();
        let found: Option<i64> = self
            .db
            .read(move |conn| {
                conn.prepare_cached("SELECT 1 FROM executions WHERE name = ?1")?
                    .query_row([&name], |row| row.get(0))
                    .optional()
            })
            .await?;
        Ok(found.is_some())
    }

    /// The execution named `name`, as callers see it.
    pub async fn view(&self, name: &str) -> Result<Option<ExecutionView>, EngineError> {
        let views = self
            .views(
                "WHERE name = ?1".to_owned(),
                vec![Box::new(name.to_owned())],
            )
            .await?;
        Ok(views.into_iter().next())
    }

    /// Executions newest first (by name within a millisecond, as pages), at most `limit`,
    /// optionally with `status` only.
    pub async fn list(
        &self,
        status: Option<ExecutionStatus>,
        limit: usize,
    ) -> Result<Vec<ExecutionView>, EngineError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match status {
            Some(status) => {
                self.views(
                    "WHERE status = ?1 ORDER BY started_at DESC, name DESC LIMIT ?2".to_owned(),
                    vec![Box::new(status_text(status)), Box::new(limit)],
                )
                .await
            }
            None => {
                self.views(
                    "ORDER BY started_at DESC, name DESC LIMIT ?1".to_owned(),
                    vec![Box::new(limit)],
                )
                .await
            }
        }
    }

    async fn views(
        &self,
        clause: String,
        args: Vec<Box<dyn rusqlite::ToSql + Send>>,
    ) -> Result<Vec<ExecutionView>, EngineError> {
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
            String,
            i64,
            Option<i64>,
            i64,
            i64,
        );
        let rows: Vec<Row> = self
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT name, status, input, output, error, cause, current_state, state_input, started_at,
                     stopped_at, transitions, history_events FROM executions {clause}"
                ))?;
                let refs: Vec<&dyn rusqlite::ToSql> =
                    args.iter().map(|arg| arg.as_ref() as &dyn rusqlite::ToSql).collect();
                stmt.query_map(refs.as_slice(), |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                        row.get(9)?,
                        row.get(10)?,
                        row.get(11)?,
                    ))
                })?
                .collect::<Result<Vec<Row>, _>>()
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ExecutionView {
                    name: r.0,
                    status: parse_status(&r.1)?,
                    input: parse_json(&r.2)?,
                    output: r.3.as_deref().map(parse_json).transpose()?,
                    error: r.4,
                    cause: r.5,
                    current_state: Some(r.6),
                    state_input: Some(parse_json(&r.7)?),
                    started_at: from_ms(r.8),
                    stopped_at: r.9.map(from_ms),
                    transitions: u64::try_from(r.10).unwrap_or(0),
                    history_events: u64::try_from(r.11).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Deletes finished executions (and their history) that stopped before `before`.
    pub async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, EngineError> {
        self.db
            .write_relaxed(move |tx| {
                tx.execute(
                    "DELETE FROM history WHERE execution IN (SELECT name FROM executions
                     WHERE status != 'RUNNING' AND stopped_at < ?1)",
                    [ms(before)],
                )?;
                tx.execute(
                    "DELETE FROM waits WHERE execution IN (SELECT name FROM executions
                     WHERE status != 'RUNNING' AND stopped_at < ?1)",
                    [ms(before)],
                )?;
                let deleted = tx.execute(
                    "DELETE FROM executions WHERE status != 'RUNNING' AND stopped_at < ?1",
                    [ms(before)],
                )?;
                Ok(u64::try_from(deleted).unwrap_or(0))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn versions_guard_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("x.db")).expect("open");
        let now = Utc::now();
        let outcome = store
            .insert("e", &json!({"a": 1}), "A", None, &[], now)
            .await
            .expect("insert");
        assert_eq!(outcome, StartOutcome::Started);
        let cursor = store.cursor("e").await.expect("cursor").expect("exists");
        assert_eq!(cursor.version, 1);
        let update = Update::Enter {
            state: "B".into(),
            input: json!(2),
            wake_at: None,
        };
        assert_eq!(
            store
                .apply("e", 1, vec![update.clone()], vec![], now)
                .await
                .expect("apply"),
            Some(2)
        );
        assert_eq!(
            store
                .apply("e", 1, vec![update.clone()], vec![], now)
                .await
                .expect("stale"),
            None
        );
        assert!(store.abort("e", "E", "C", now).await.expect("abort"));
        assert_eq!(
            store
                .apply("e", 3, vec![update.clone()], vec![], now)
                .await
                .expect("aborted"),
            None
        );
        let view = store.view("e").await.expect("view").expect("exists");
        assert_eq!(view.status, ExecutionStatus::Aborted);
        assert_eq!(view.current_state.as_deref(), Some("B"));
        assert_eq!(view.transitions, 2);
    }

    #[tokio::test]
    async fn a_cursor_advanced_in_memory_is_the_one_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("x.db")).expect("open");
        let now = Utc::now();
        store
            .insert("e", &json!({"a": 1}), "A", None, &[], now)
            .await
            .expect("insert");
        let mut cursor = store.cursor("e").await.expect("cursor").expect("exists");
        // Not whole milliseconds: the database keeps milliseconds.
        let later = now + chrono::Duration::microseconds(1_500_250);
        let updates = [
            Update::Enter {
                state: "B".into(),
                input: json!({"b": [2]}),
                wake_at: Some(later + chrono::Duration::microseconds(10_000_300)),
            },
            Update::Attempt,
            Update::Retry {
                retry_counts: vec![0, 2],
                wake_at: later + chrono::Duration::microseconds(300),
            },
            Update::Attempt,
            Update::Enter {
                state: "C".into(),
                input: json!(3),
                wake_at: None,
            },
            Update::Finish {
                status: ExecutionStatus::Succeeded,
                output: Some(json!(4)),
                error: None,
                cause: None,
            },
        ];
        for update in updates {
            let version = cursor.version;
            let written = store
                .apply("e", version, vec![update.clone()], vec![], later)
                .await
                .expect("apply");
            assert_eq!(written, Some(version + 1));
            cursor.advance(&update, later);
            let read = store.cursor("e").await.expect("cursor").expect("exists");
            assert_eq!(cursor, read, "after {update:?}");
        }
    }

    #[tokio::test]
    async fn steps_written_together_are_all_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("x.db")).expect("open");
        let now = Utc::now();
        store
            .insert("e", &json!({}), "A", None, &[], now)
            .await
            .expect("insert");
        let enter = |state: &str| Update::Enter {
            state: state.into(),
            input: json!(state),
            wake_at: None,
        };
        let events = [
            NewEvent::new("PassStateExited", Some("A"), json!({"output": "B"})),
            NewEvent::new("PassStateEntered", Some("B"), json!({"input": "B"})),
        ];
        let steps = [enter("B"), enter("C"), Update::Attempt];
        assert_eq!(
            store
                .apply("e", 1, steps.to_vec(), events.to_vec(), now)
                .await
                .expect("apply"),
            Some(4)
        );
        // Based on a version that moved on: nothing of it is written.
        assert_eq!(
            store
                .apply("e", 2, steps.to_vec(), events.to_vec(), now)
                .await
                .expect("stale"),
            None
        );
        let view = store.view("e").await.expect("view").expect("exists");
        assert_eq!(view.current_state.as_deref(), Some("C"));
        assert_eq!(view.transitions, 3);
        assert_eq!(view.history_events, 2);
        let history = store.history("e").await.expect("history");
        assert_eq!(history.len(), 2);
    }

    /// The schema before `executions_by_start` was dropped (it is a prefix of
    /// `executions_by_start_name`).
    const OLD_SCHEMA: &str = "
        CREATE TABLE executions (
            name TEXT PRIMARY KEY, input TEXT NOT NULL, status TEXT NOT NULL,
            current_state TEXT NOT NULL, state_input TEXT NOT NULL,
            state_entered_at INTEGER NOT NULL, retry_counts TEXT NOT NULL DEFAULT '[]',
            wake_at INTEGER, output TEXT, error TEXT, cause TEXT, started_at INTEGER NOT NULL,
            stopped_at INTEGER, transitions INTEGER NOT NULL DEFAULT 0,
            history_events INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX executions_by_status ON executions (status, wake_at);
        CREATE INDEX executions_by_start ON executions (started_at);
        CREATE INDEX executions_by_start_name ON executions (started_at, name);
        CREATE INDEX executions_by_status_start_name ON executions (status, started_at, name);
        CREATE TABLE history (
            execution TEXT NOT NULL, seq INTEGER NOT NULL, timestamp INTEGER NOT NULL,
            event_type TEXT NOT NULL, state TEXT, detail TEXT NOT NULL,
            PRIMARY KEY (execution, seq)
        );
        INSERT INTO executions (name, input, status, current_state, state_input,
            state_entered_at, wake_at, started_at, transitions, history_events, version)
        VALUES ('old', '{\"a\":1}', 'RUNNING', 'A', '{\"a\":1}', 1000, 5000, 1000, 1, 1, 1),
               ('done', '{}', 'SUCCEEDED', 'B', '{}', 1000, NULL, 1000, 2, 0, 3);
        INSERT INTO history VALUES ('old', 1, 1000, 'ExecutionStarted', NULL, '{\"input\":{\"a\":1}}');
    ";

    #[tokio::test]
    async fn a_database_of_the_old_schema_opens_and_keeps_its_executions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engine.db");
        crate::sqlite::connect(&path)
            .expect("connect")
            .execute_batch(OLD_SCHEMA)
            .expect("old schema");
        let store = Store::open(&path).expect("open");
        let indexes: Vec<String> = store
            .db
            .read(|conn| {
                conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'executions' AND sql IS NOT NULL ORDER BY name")?
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .await
            .expect("indexes");
        assert_eq!(
            indexes,
            [
                "executions_by_start_name",
                "executions_by_status",
                "executions_by_status_start_name"
            ]
        );
        let cursor = store.cursor("old").await.expect("cursor").expect("kept");
        assert_eq!(cursor.input, json!({"a": 1}));
        assert_eq!(cursor.wake_at, Some(from_ms(5000)));
        let names: Vec<String> = store
            .list(None, 10)
            .await
            .expect("list")
            .into_iter()
            .map(|view| view.name)
            .collect();
        assert_eq!(names, ["old", "done"]);
        assert_eq!(store.history("old").await.expect("history").len(), 1);
        // It goes on: the next step is written and its event numbered after the old one.
        let update = Update::Attempt;
        let event = NewEvent::new("TaskStarted", Some("A"), json!({}));
        let written = store
            .apply("old", 1, vec![update], vec![event], Utc::now())
            .await
            .expect("apply");
        assert_eq!(written, Some(2));
        let history = store.history("old").await.expect("history");
        assert_eq!(history.last().map(|event| event.seq), Some(2));
    }

    #[tokio::test]
    async fn the_due_executions_are_read_from_two_ranges_of_the_status_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("x.db")).expect("open");
        let now = Utc::now();
        let second = chrono::Duration::seconds(1);
        // Started one second apart, oldest first: a (no wake-up), b (sleeping), c (due),
        // d (ended).
        for (i, (name, wake_at)) in [
            ("a", None),
            ("b", Some(now + second)),
            ("c", Some(now - second)),
            ("d", None),
        ]
        .into_iter()
        .enumerate()
        {
            let started = now - second * (10 - i32::try_from(i).expect("small"));
            store
                .insert(name, &json!({}), "A", wake_at, &[], started)
                .await
                .expect("insert");
        }
        assert!(store.abort("d", "E", "C", now).await.expect("abort"));
        let (due, next) = store.due(now).await.expect("due");
        assert_eq!(due, ["a", "c"]);
        assert_eq!(next, Some(from_ms(ms(now + second))));
        let plan: Vec<String> = store
            .db
            .read(|conn| {
                conn.prepare(&format!("EXPLAIN QUERY PLAN {DUE_QUERY}"))?
                    .query_map([0], |row| row.get(3))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .await
            .expect("plan");
        let searches: Vec<&String> = plan
            .iter()
            .filter(|line| line.contains("executions"))
            .collect();
        assert_eq!(
            searches,
            [
                "SEARCH executions USING INDEX executions_by_status (status=? AND wake_at=?)",
                "SEARCH executions USING INDEX executions_by_status (status=? AND wake_at<?)"
            ],
            "{plan:?}"
        );
    }
}
