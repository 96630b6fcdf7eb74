//! `LocalGate`: the task line in SQLite, so places survive a restart.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::adapters::line::{LineEntry, LineLimits, admitted_whatever_the_line, decide};
use crate::ports::{Admission, ConcurrencyGate, PortError};
use crate::sqlite::Db;

/// The embedded mode's [`ConcurrencyGate`].
pub struct LocalGate {
    db: Db,
    limits: LineLimits,
}

impl LocalGate {
    /// Opens `path`, with at most `max_running` tasks running (None: no limit) and at most
    /// `per_key` per concurrency key.
    pub fn open(
        path: &Path,
        max_running: Option<usize>,
        per_key: usize,
    ) -> Result<Self, PortError> {
        let db = Db::open(path, "line-db", |conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS line (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    task_id TEXT NOT NULL UNIQUE,
                    key TEXT,
                    running INTEGER NOT NULL DEFAULT 0
                );",
            )
        })
        .map_err(|err| {
            PortError::Permanent(format!(
                "cannot open the task line {}: {err}",
                path.display()
            ))
        })?;
        Ok(Self {
            db,
            limits: LineLimits {
                max_running,
                per_key: per_key.max(1),
            },
        })
    }
}

fn gate_error(err: rusqlite::Error) -> PortError {
    PortError::Transient(format!("task line: {err}"))
}

#[async_trait]
impl ConcurrencyGate for LocalGate {
    async fn admit(&self, task_id: &str, key: Option<&str>) -> Result<Admission, PortError> {
        let (task_id, key, limits) = (task_id.to_owned(), key.map(str::to_owned), self.limits);
        if admitted_whatever_the_line(limits, key.as_deref()) {
            // Not reading the whole line for it: with many tasks in flight that read was
            // most of an admission.
            return self
                .db
                .write_relaxed(move |tx| {
                    tx.prepare_cached(
                        "INSERT INTO line (task_id, key, running) VALUES (?1, NULL, 1)
                         ON CONFLICT (task_id) DO UPDATE SET running = 1",
                    )?
                    .execute(params![task_id])
                    .map(|_| Admission::Admitted)
                })
                .await
                .map_err(gate_error);
        }
        self.db
            .write_relaxed(move |tx| {
                tx.prepare_cached("INSERT OR IGNORE INTO line (task_id, key) VALUES (?1, ?2)")?
                    .execute(params![task_id, key])?;
                let already: Option<bool> = tx
                    .prepare_cached("SELECT running FROM line WHERE task_id = ?1")?
                    .query_row(params![task_id], |row| row.get(0))
                    .optional()?;
                if already == Some(true) {
                    return Ok(Admission::Admitted);
                }
                let line: Vec<LineEntry> = tx
                    .prepare_cached("SELECT task_id, key, running FROM line ORDER BY seq")?
                    .query_map([], |row| {
                        Ok(LineEntry {
                            task_id: row.get(0)?,
                            key: row.get(1)?,
                            running: row.get(2)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                let admission = decide(&line, &task_id, limits);
                if admission == Admission::Admitted {
                    tx.prepare_cached("UPDATE line SET running = 1 WHERE task_id = ?1")?
                        .execute(params![task_id])?;
                }
                Ok(admission)
            })
            .await
            .map_err(gate_error)
    }

    async fn release(&self, task_id: &str) -> Result<(), PortError> {
        let task_id = task_id.to_owned();
        self.db
            .write_relaxed(move |tx| {
                tx.prepare_cached("DELETE FROM line WHERE task_id = ?1")?
                    .execute(params![task_id])
                    .map(drop)
            })
            .await
            .map_err(gate_error)
    }

    async fn running_with_key(&self, key: &str) -> Result<Vec<String>, PortError> {
        let key = key.to_owned();
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT task_id FROM line WHERE key = ?1 AND running = 1 ORDER BY seq",
                )?
                .query_map(params![key], |row| row.get(0))?
                .collect::<Result<_, _>>()
            })
            .await
            .map_err(gate_error)
    }

    async fn holders(&self) -> Result<Vec<String>, PortError> {
        self.db
            .read(|conn| {
                conn.prepare_cached("SELECT task_id FROM line ORDER BY seq")?
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<_, _>>()
            })
            .await
            .map_err(gate_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(dir: &Path, max: Option<usize>) -> LocalGate {
        LocalGate::open(&dir.join("gate.db"), max, 1).unwrap()
    }

    #[tokio::test]
    async fn a_deployment_limit_admits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), Some(2));
        assert_eq!(gate.admit("a", None).await.unwrap(), Admission::Admitted);
        assert_eq!(gate.admit("b", None).await.unwrap(), Admission::Admitted);
        assert_eq!(
            gate.admit("c", None).await.unwrap(),
            Admission::Queued { ahead: 0 }
        );
        assert_eq!(
            gate.admit("d", None).await.unwrap(),
            Admission::Queued { ahead: 1 }
        );
        assert_eq!(
            gate.admit("d", None).await.unwrap(),
            Admission::Queued { ahead: 1 },
            "asking again keeps the place"
        );
        gate.release("a").await.unwrap();
        assert_eq!(
            gate.admit("d", None).await.unwrap(),
            Admission::Queued { ahead: 1 },
            "c is first in line"
        );
        assert_eq!(gate.admit("c", None).await.unwrap(), Admission::Admitted);
        assert_eq!(
            gate.admit("c", None).await.unwrap(),
            Admission::Admitted,
            "admitted stays admitted"
        );
    }

    #[tokio::test]
    async fn one_per_key_and_other_keys_pass() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), None);
        assert_eq!(
            gate.admit("a1", Some("app-a")).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            gate.admit("a2", Some("app-a")).await.unwrap(),
            Admission::Queued { ahead: 0 }
        );
        assert_eq!(
            gate.admit("b1", Some("app-b")).await.unwrap(),
            Admission::Admitted,
            "another key is not held up"
        );
        assert_eq!(gate.admit("free", None).await.unwrap(), Admission::Admitted);
        assert_eq!(gate.running_with_key("app-a").await.unwrap(), vec!["a1"]);
        gate.release("a1").await.unwrap();
        assert_eq!(
            gate.admit("a2", Some("app-a")).await.unwrap(),
            Admission::Admitted
        );
    }

    #[tokio::test]
    async fn without_a_limit_keyless_tasks_are_admitted_and_held_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), None);
        assert_eq!(
            gate.admit("k1", Some("app")).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            gate.admit("k2", Some("app")).await.unwrap(),
            Admission::Queued { ahead: 0 }
        );
        for task in ["x", "y", "x"] {
            assert_eq!(gate.admit(task, None).await.unwrap(), Admission::Admitted);
        }
        assert_eq!(gate.holders().await.unwrap(), vec!["k1", "k2", "x", "y"]);
        gate.release("x").await.unwrap();
        assert_eq!(gate.holders().await.unwrap(), vec!["k1", "k2", "y"]);
    }

    #[tokio::test]
    async fn places_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        gate(dir.path(), Some(1)).admit("a", None).await.unwrap();
        gate(dir.path(), Some(1)).admit("b", None).await.unwrap();
        let reopened = gate(dir.path(), Some(1));
        assert_eq!(
            reopened.admit("b", None).await.unwrap(),
            Admission::Queued { ahead: 0 }
        );
        assert_eq!(reopened.holders().await.unwrap(), vec!["a", "b"]);
    }
}
