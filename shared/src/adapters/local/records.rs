//! Small per-task records of the embedded mode kept in SQLite (`<data>/worker.db`) instead
//! of files: the task token a waiting execution is resumed with, and the record of the
//! callback the receiver accepted.
//!
//! Each was a file per task to create (and, for the token, to delete again): on ext4 every
//! new inode is searched for past the inodes deleted in the last minutes, so under a steady
//! stream of short tasks those files cost more than the task itself. Rows are written with
//! the other writes of the moment, in one transaction (see [`crate::sqlite`]); like the
//! files they replace, they survive a crash or `kill -9` at once.
//!
//! Data directories written by an older version still have `tokens/<task id>` and
//! `workers/<task id>/delivered.json`; both are still read when no row is found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use rusqlite::{OptionalExtension, params};

use crate::ports::{DeliveryRecord, PortError};
use crate::sqlite::Db;

/// The database file in the data directory.
pub const RECORDS_DB: &str = "worker.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    task_id TEXT PRIMARY KEY,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    task_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
";

/// The records of one data directory.
pub struct Records {
    db: Db,
    data_dir: PathBuf,
}

fn records_error(err: impl std::fmt::Display) -> PortError {
    PortError::Transient(format!("worker records: {err}"))
}

impl Records {
    /// The records of `data_dir`, shared by everything in this process that uses them.
    pub fn shared(data_dir: &Path) -> Result<Arc<Self>, PortError> {
        static OPEN: Mutex<Option<HashMap<PathBuf, Weak<Records>>>> = Mutex::new(None);
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        let open = open.get_or_insert_with(HashMap::new);
        if let Some(records) = open.get(data_dir).and_then(Weak::upgrade) {
            return Ok(records);
        }
        let path = data_dir.join(RECORDS_DB);
        let db =
            Db::open(&path, "records-db", |conn| conn.execute_batch(SCHEMA)).map_err(|err| {
                PortError::Permanent(format!(
                    "cannot open the worker records {}: {err}",
                    path.display()
                ))
            })?;
        let records = Arc::new(Self {
            db,
            data_dir: data_dir.to_owned(),
        });
        open.retain(|_, records| records.strong_count() > 0);
        open.insert(data_dir.to_owned(), Arc::downgrade(&records));
        Ok(records)
    }

    fn legacy_token_file(&self, task_id: &str) -> PathBuf {
        self.data_dir.join("tokens").join(task_id)
    }

    fn legacy_delivery_file(&self, task_id: &str) -> PathBuf {
        self.data_dir
            .join("workers")
            .join(task_id)
            .join("delivered.json")
    }

    /// Runs `statement` with the task id and `value` as its two parameters.
    async fn write(
        &self,
        statement: &'static str,
        task_id: &str,
        value: String,
    ) -> Result<(), PortError> {
        let task_id = task_id.to_owned();
        self.db
            .write_relaxed(move |tx| {
                tx.prepare_cached(statement)?
                    .execute(params![task_id, value])
                    .map(drop)
            })
            .await
            .map_err(records_error)
    }

    /// Keeps `token` as the task's newest token.
    pub async fn keep_token(&self, task_id: &str, token: &str) -> Result<(), PortError> {
        self.write(
            "INSERT INTO tokens (task_id, token) VALUES (?1, ?2)
             ON CONFLICT (task_id) DO UPDATE SET token = excluded.token",
            task_id,
            token.to_owned(),
        )
        .await
    }

    /// The one text column `query` selects for `task_id`, if it has a row.
    async fn text(&self, query: &'static str, task_id: &str) -> Result<Option<String>, PortError> {
        let id = task_id.to_owned();
        self.db
            .read(move |conn| {
                conn.prepare_cached(query)?
                    .query_row(params![id], |row| row.get(0))
                    .optional()
            })
            .await
            .map_err(records_error)
    }

    /// The task's newest kept token.
    pub async fn token(&self, task_id: &str) -> Result<Option<String>, PortError> {
        let row = self
            .text("SELECT token FROM tokens WHERE task_id = ?1", task_id)
            .await?;
        if row.is_some() {
            return Ok(row);
        }
        match std::fs::read_to_string(self.legacy_token_file(task_id)) {
            Ok(token) => Ok(Some(token)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(records_error(format!(
                "cannot read the task token file of {task_id}: {err}"
            ))),
        }
    }

    /// Forgets the task's token once it was answered, unless a newer one was kept meanwhile.
    pub async fn forget_token(&self, task_id: &str, token: &str) -> Result<(), PortError> {
        let _ = std::fs::remove_file(self.legacy_token_file(task_id));
        self.write(
            "DELETE FROM tokens WHERE task_id = ?1 AND token = ?2",
            task_id,
            token.to_owned(),
        )
        .await
    }

    /// Records that the task's callback was accepted by its receiver.
    pub async fn record_delivery(
        &self,
        task_id: &str,
        record: &DeliveryRecord,
    ) -> Result<(), PortError> {
        let record = serde_json::to_string(record).map_err(records_error)?;
        self.write(
            "INSERT INTO deliveries (task_id, record) VALUES (?1, ?2)
             ON CONFLICT (task_id) DO UPDATE SET record = excluded.record",
            task_id,
            record,
        )
        .await
    }

    /// The record of the task's accepted callback, if there is one.
    pub async fn delivery(&self, task_id: &str) -> Result<Option<DeliveryRecord>, PortError> {
        let row = self
            .text("SELECT record FROM deliveries WHERE task_id = ?1", task_id)
            .await?;
        match row {
            Some(text) => serde_json::from_str(&text).map(Some).map_err(records_error),
            None => Ok(super::layout::read_json(
                &self.legacy_delivery_file(task_id),
            )),
        }
    }
}

/// A data directory's [`Records`], opened at first use.
#[derive(Default)]
pub struct LazyRecords {
    records: OnceLock<Arc<Records>>,
}

impl LazyRecords {
    /// The records of `data_dir`, opened now if they are not yet.
    pub fn get(&self, data_dir: &Path) -> Result<&Records, PortError> {
        if let Some(records) = self.records.get() {
            return Ok(records);
        }
        let records = Records::shared(data_dir)?;
        Ok(self.records.get_or_init(|| records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_kept_replaced_and_forgotten_only_when_still_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::shared(dir.path()).unwrap();
        assert_eq!(records.token("t").await.unwrap(), None);
        records.keep_token("t", "first").await.unwrap();
        records.keep_token("t", "second").await.unwrap();
        assert_eq!(records.token("t").await.unwrap().as_deref(), Some("second"));
        records.forget_token("t", "first").await.unwrap();
        assert_eq!(records.token("t").await.unwrap().as_deref(), Some("second"));
        records.forget_token("t", "second").await.unwrap();
        assert_eq!(records.token("t").await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_older_files_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let record = DeliveryRecord {
            webhook_id: "msg_t".into(),
            status_code: 204,
            signed: true,
        };
        {
            let records = Records::shared(dir.path()).unwrap();
            records.record_delivery("t", &record).await.unwrap();
            records.keep_token("t", "tok").await.unwrap();
            assert!(
                Arc::ptr_eq(&records, &Records::shared(dir.path()).unwrap()),
                "one database per data directory in a process"
            );
        }
        let reopened = Records::shared(dir.path()).unwrap();
        assert_eq!(reopened.delivery("t").await.unwrap(), Some(record.clone()));
        assert_eq!(reopened.token("t").await.unwrap().as_deref(), Some("tok"));

        // An older version's files.
        std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
        std::fs::write(dir.path().join("tokens").join("old"), "old-token").unwrap();
        let worker = dir.path().join("workers").join("old");
        std::fs::create_dir_all(&worker).unwrap();
        std::fs::write(
            worker.join("delivered.json"),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();
        assert_eq!(
            reopened.token("old").await.unwrap().as_deref(),
            Some("old-token")
        );
        assert_eq!(reopened.delivery("old").await.unwrap(), Some(record));
        reopened.forget_token("old", "old-token").await.unwrap();
        assert_eq!(reopened.token("old").await.unwrap(), None);
    }
}
