//! History events: appended in the transaction of the step they tell of, read in order.
//!
//! A step often passes the same value on: a state's output is the next state's input
//! (and a Choice's or Succeed's output its input). Within one write, an event whose only
//! detail (`input` or `output`) equals the previous event's is stored as that key alone,
//! a JSON string where every other detail is an object, and read back whole.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde_json::{Map, Value};

use super::{HistoryEvent, NewEvent, Store, from_ms, ms, parse_json};
use crate::engine::error::EngineError;

/// The key and value of a detail that holds only an `input` or an `output`.
fn single(detail: &Value) -> Option<(&str, &Value)> {
    let fields = detail.as_object()?;
    let (key, value) = fields.iter().next()?;
    (fields.len() == 1 && (key == "input" || key == "output")).then_some((key.as_str(), value))
}

/// Appends `events` to the history of `name`, numbered after its last one.
pub(super) fn append_events(
    tx: &Connection,
    name: &str,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<(), EngineError> {
    if events.is_empty() {
        return Ok(());
    }
    let count: i64 = tx
        .prepare_cached("SELECT history_events FROM executions WHERE name = ?1")?
        .query_row([name], |row| row.get(0))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO history (execution, seq, timestamp, event_type, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut previous: Option<&Value> = None;
    for (i, event) in events.iter().enumerate() {
        let seq = count + 1 + i64::try_from(i).unwrap_or(i64::MAX);
        let detail = match single(&event.detail) {
            Some((key, value)) if previous == Some(value) => Value::from(key).to_string(),
            _ => event.detail.to_string(),
        };
        previous = single(&event.detail).map(|(_, value)| value);
        insert.execute(params![
            name,
            seq,
            ms(now),
            event.event_type,
            event.state,
            detail
        ])?;
    }
    tx.prepare_cached(
        "UPDATE executions SET history_events = history_events + ?2 WHERE name = ?1",
    )?
    .execute(params![
        name,
        i64::try_from(events.len()).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

impl Store {
    /// The history of `name`, in order.
    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEvent>, EngineError> {
        self.history_after(name, 0).await
    }

    /// The history of `name` past its `after`-th event, in order (the primary key serves it).
    /// Reading starts at the last event up to `after` stored whole, so the events past it
    /// that repeat a value can be given it.
    pub async fn history_after(
        &self,
        name: &str,
        after: u64,
    ) -> Result<Vec<HistoryEvent>, EngineError> {
        let execution = name.to_owned();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self
            .db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT seq, timestamp, event_type, state, detail FROM history WHERE execution = ?1
                     AND seq >= COALESCE((SELECT seq FROM history WHERE execution = ?1 AND seq <= ?2
                         AND substr(detail, 1, 1) != '\"' ORDER BY seq DESC LIMIT 1), 0)
                     ORDER BY seq",
                )?
                .query_map(params![execution, after], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut previous: Option<Value> = None;
        for (seq, timestamp, event_type, state, detail) in rows {
            let detail = match parse_json(&detail)? {
                Value::String(key) => {
                    let value = previous.clone().ok_or_else(|| {
                        EngineError::Corrupt(format!(
                            "history event {seq} of {name:?} repeats a value no event before it holds"
                        ))
                    })?;
                    Value::Object(Map::from_iter([(key, value)]))
                }
                detail => detail,
            };
            previous = single(&detail).map(|(_, value)| value.clone());
            if seq > after {
                events.push(HistoryEvent {
                    seq: u64::try_from(seq).unwrap_or(0),
                    timestamp: from_ms(timestamp),
                    event_type,
                    state,
                    detail,
                });
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn a_value_passed_on_is_stored_once_and_every_suffix_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("x.db")).expect("open");
        let now = Utc::now();
        let input = json!({"task": {"id": "t", "files": ["a.sh", "b.sh"]}});
        let output = json!({"task": {"id": "t"}, "run": {"done": true}});
        let events = vec![
            NewEvent::new("ExecutionStarted", None, json!({"input": input})),
            NewEvent::new("TaskStateEntered", Some("A"), json!({"input": input})),
            NewEvent::new("TaskStarted", Some("A"), json!({})),
            NewEvent::new("TaskSucceeded", Some("A"), json!({"output": output})),
            NewEvent::new("TaskStateExited", Some("A"), json!({"output": output})),
            NewEvent::new("ChoiceStateEntered", Some("B"), json!({"input": output})),
            NewEvent::new("ChoiceStateExited", Some("B"), json!({"output": output})),
            NewEvent::new(
                "FailStateEntered",
                Some("C"),
                json!({"input": {"other": 1}}),
            ),
            NewEvent::new("ExecutionFailed", None, json!({"error": "E", "cause": "C"})),
        ];
        store
            .insert("e", &input, "A", None, &events[..2], now)
            .await
            .expect("insert");
        let written = store
            .apply("e", 1, vec![], events[2..].to_vec(), now)
            .await
            .expect("apply");
        assert_eq!(written, Some(1));
        let history = store.history("e").await.expect("history");
        let details: Vec<&Value> = history.iter().map(|event| &event.detail).collect();
        let expected: Vec<&Value> = events.iter().map(|event| &event.detail).collect();
        assert_eq!(details, expected);
        for after in 0..=events.len() {
            let suffix = store
                .history_after("e", u64::try_from(after).expect("small"))
                .await
                .expect("history after");
            assert_eq!(suffix.as_slice(), &history[after..], "after {after}");
        }
        // Repeats stored as their key: the input once, the output three times.
        let stored: i64 = store
            .db
            .read(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM history WHERE substr(detail, 1, 1) = '\"'",
                    [],
                    |row| row.get(0),
                )
            })
            .await
            .expect("count");
        assert_eq!(stored, 4);
    }
}
