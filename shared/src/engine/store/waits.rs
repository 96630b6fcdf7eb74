//! Open task-token waits (`.waitForTaskToken`): one row per execution, the token of its
//! current attempt, its deadlines, and what the token was answered with. Written in the
//! same transactions as the execution's steps, so a restart keeps waiting on the same token.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::{
    Cursor, NewEvent, Store, Update, append_events, apply_updates, cursor_from, from_ms, ms,
    parse_json, read_cursor,
};
use crate::engine::error::EngineError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS waits (
    execution TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    timeout_at INTEGER NOT NULL,
    heartbeat_seconds INTEGER,
    heartbeat_at INTEGER,
    invoked INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    closed INTEGER NOT NULL DEFAULT 0
);
";

/// A wait about to open: the attempt's token and deadlines.
#[derive(Clone, Debug)]
pub struct NewWait {
    /// The token (`$$.Task.Token`).
    pub token: String,
    /// The task's `TimeoutSeconds` ends here.
    pub timeout_at: DateTime<Utc>,
    /// `HeartbeatSeconds`, when the task has one.
    pub heartbeat_seconds: Option<u64>,
}

/// How a token was answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// `SendTaskSuccess` with this output.
    Success(Value),
    /// `SendTaskFailure` with this error and cause.
    Failure {
        /// The error name.
        error: String,
        /// The cause.
        cause: String,
    },
}

/// The wait of an execution's current (or last) token attempt.
#[derive(Clone, Debug)]
pub struct Wait {
    /// The token.
    pub token: String,
    /// When `TimeoutSeconds` runs out.
    pub timeout_at: DateTime<Utc>,
    /// When the heartbeat runs out, if the task has one.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Whether the task's handler returned (the wait itself has begun).
    pub invoked: bool,
    /// The token's answer, once it came.
    pub answer: Option<Answer>,
    /// Whether the state was left: the token no longer answers anything.
    pub closed: bool,
}

impl Wait {
    /// When the waiting attempt must be looked at again: its earliest deadline.
    pub fn deadline(&self) -> DateTime<Utc> {
        self.heartbeat_at
            .map_or(self.timeout_at, |beat| beat.min(self.timeout_at))
    }
}

/// What a token named, when something answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// An open wait of this execution; the answer was recorded.
    Open(String),
    /// The wait this token opened is over (answered, timed out, or the state was left).
    Closed,
    /// No wait has this token.
    Unknown,
}

fn answer_text(answer: &Answer) -> String {
    match answer {
        Answer::Success(output) => json!({ "output": output }).to_string(),
        Answer::Failure { error, cause } => json!({ "error": error, "cause": cause }).to_string(),
    }
}

fn parse_answer(text: &str) -> Result<Answer, EngineError> {
    let value = parse_json(text)?;
    match value.get("output") {
        Some(output) => Ok(Answer::Success(output.clone())),
        None => Ok(Answer::Failure {
            error: value["error"].as_str().unwrap_or_default().to_owned(),
            cause: value["cause"].as_str().unwrap_or_default().to_owned(),
        }),
    }
}

/// Closes the wait of `name`: its state is being left (or the execution ends). A closed
/// wait is not rewritten (every transition calls this).
pub(super) fn close(tx: &Connection, name: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE waits SET closed = 1 WHERE execution = ?1 AND closed = 0")?
        .execute([name])?;
    Ok(())
}

/// Points the execution's wake-up at `at`, if it still runs.
fn wake_at(tx: &Connection, name: &str, at: DateTime<Utc>) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE executions SET wake_at = ?2 WHERE name = ?1 AND status = 'RUNNING'")?
        .execute(params![name, ms(at)])?;
    Ok(())
}

type WaitRow = (String, i64, Option<i64>, bool, Option<String>, bool);

fn read_wait(conn: &Connection, name: &str) -> rusqlite::Result<Option<WaitRow>> {
    conn.prepare_cached(
        "SELECT token, timeout_at, heartbeat_at, invoked, outcome, closed FROM waits WHERE execution = ?1",
    )?
    .query_row([name], |row| {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        ))
    })
    .optional()
}

fn wait_from(row: WaitRow) -> Result<Wait, EngineError> {
    let (token, timeout, heartbeat, invoked, outcome, closed) = row;
    Ok(Wait {
        token,
        timeout_at: from_ms(timeout),
        heartbeat_at: heartbeat.map(from_ms),
        invoked,
        answer: outcome.as_deref().map(parse_answer).transpose()?,
        closed,
    })
}

impl Store {
    /// Starts a token attempt at `version`: `updates` (the last of them the attempt, as in
    /// [`Store::apply`]), the events and the attempt's open wait, in one transaction
    /// (replacing the execution's previous wait). The new version, or `None` when the
    /// execution moved on. Relaxed: an attempt lost to a power cut runs again.
    pub async fn begin_wait(
        &self,
        name: &str,
        version: i64,
        updates: Vec<Update>,
        events: Vec<NewEvent>,
        wait: NewWait,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, EngineError> {
        let name = name.to_owned();
        self.db
            .write_relaxed(move |tx| {
                let Some(version) = apply_updates(tx, &name, version, &updates, now)? else {
                    return Ok(None);
                };
                append_events(tx, &name, &events, now)?;
                let heartbeat_at = wait.heartbeat_seconds.map(|seconds| {
                    now + chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX))
                });
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO waits (execution, token, timeout_at, heartbeat_seconds, heartbeat_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    name,
                    wait.token,
                    ms(wait.timeout_at),
                    wait.heartbeat_seconds
                        .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                    heartbeat_at.map(ms)
                ])?;
                Ok(Some(version))
            })
            .await
    }

    /// The wait of execution `name`, if it ever had one.
    pub async fn wait(&self, name: &str) -> Result<Option<Wait>, EngineError> {
        let name = name.to_owned();
        let row = self.db.read(move |conn| read_wait(conn, &name)).await?;
        row.map(wait_from).transpose()
    }

    /// Where execution `name` is and the wait of its current (or last) token attempt, in
    /// one read; `None` when it does not exist.
    pub async fn position(
        &self,
        name: &str,
    ) -> Result<Option<(Cursor, Option<Wait>)>, EngineError> {
        let name = name.to_owned();
        let rows = self
            .db
            .read(move |conn| {
                let Some(cursor) = read_cursor(conn, &name)? else {
                    return Ok(None);
                };
                Ok::<_, rusqlite::Error>(Some((cursor, read_wait(conn, &name)?)))
            })
            .await?;
        rows.map(|(cursor, wait)| Ok((cursor_from(cursor)?, wait.map(wait_from).transpose()?)))
            .transpose()
    }

    /// The handler of the attempt holding `token` returned: the execution now sleeps until
    /// the wait's deadline, or is due at once when the token was answered meanwhile.
    /// `events` (`TaskSubmitted`) are written with it. The wake-up time set, or `None` when
    /// the wait is over.
    pub async fn waiting(
        &self,
        name: &str,
        token: &str,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, EngineError> {
        let (name, token, events) = (name.to_owned(), token.to_owned(), events.to_vec());
        self.db
            .write_relaxed(move |tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE waits SET invoked = 1 WHERE execution = ?1 AND token = ?2 AND closed = 0",
                    )?
                    .execute(params![name, token])?;
                if changed == 0 {
                    return Ok(None);
                }
                append_events(tx, &name, &events, now)?;
                let Some((_, timeout, heartbeat, _, outcome, _)) = read_wait(tx, &name)? else {
                    return Ok(None);
                };
                let deadline = heartbeat.map_or(timeout, |beat| beat.min(timeout));
                let due = from_ms(if outcome.is_some() { ms(now) } else { deadline });
                wake_at(tx, &name, due)?;
                Ok(Some(due))
            })
            .await
    }

    /// Records `answer` for the open wait holding `token` and makes its execution due now.
    /// Relaxed: an answer lost to a power cut is given again from the worker's end, which
    /// `serve` looks at when it starts, or found by the safety net.
    pub async fn answer(
        &self,
        token: &str,
        answer: Answer,
        now: DateTime<Utc>,
    ) -> Result<Lookup, EngineError> {
        let token = token.to_owned();
        self.db
            .write_relaxed(move |tx| {
                let found: Option<(String, bool, bool)> = tx
                    .prepare_cached(
                        "SELECT execution, closed, outcome IS NOT NULL FROM waits WHERE token = ?1",
                    )?
                    .query_row([&token], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .optional()?;
                let Some((name, closed, answered)) = found else {
                    return Ok(Lookup::Unknown);
                };
                if closed || answered {
                    return Ok(Lookup::Closed);
                }
                tx.prepare_cached("UPDATE waits SET outcome = ?2 WHERE token = ?1")?
                    .execute(params![token, answer_text(&answer)])?;
                wake_at(tx, &name, now)?;
                Ok(Lookup::Open(name))
            })
            .await
    }

    /// `SendTaskHeartbeat`: the open wait holding `token` gets a fresh heartbeat deadline.
    pub async fn heartbeat(&self, token: &str, now: DateTime<Utc>) -> Result<Lookup, EngineError> {
        let token = token.to_owned();
        self.db
            .write_relaxed(move |tx| {
                type Found = (String, bool, bool, Option<i64>, i64, bool);
                let found: Option<Found> = tx
                    .prepare_cached(
                        "SELECT execution, closed, outcome IS NOT NULL, heartbeat_seconds, timeout_at, invoked
                         FROM waits WHERE token = ?1",
                    )?
                    .query_row([&token], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                        ))
                    })
                    .optional()?;
                let Some((name, closed, answered, seconds, timeout, invoked)) = found else {
                    return Ok(Lookup::Unknown);
                };
                if closed || answered {
                    return Ok(Lookup::Closed);
                }
                if let Some(seconds) = seconds {
                    let beat = ms(now) + seconds.saturating_mul(1000);
                    tx.prepare_cached("UPDATE waits SET heartbeat_at = ?2 WHERE token = ?1")?
                        .execute(params![token, beat])?;
                    if invoked {
                        wake_at(tx, &name, from_ms(beat.min(timeout)))?;
                    }
                }
                Ok(Lookup::Open(name))
            })
            .await
    }
}
