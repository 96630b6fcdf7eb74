//! A SQLite database kept off the async runtime: one writer thread owns the write
//! connection, one reader thread owns a read connection, and async code hands them closures
//! through channels and awaits the answer.
//!
//! Writes are group-committed: the writer drains whatever is queued, runs each job in its own
//! savepoint inside one transaction, commits once, and only then answers. A batch holding a
//! [`Db::write`] commits with `synchronous=FULL` (one fsync of the WAL for the whole batch,
//! which also makes every earlier commit durable): an answered `write` is on disk. A batch of
//! [`Db::write_relaxed`] only commits with `synchronous=NORMAL`: it survives a crash or
//! `kill -9` of the process at once, and a power loss from the next durable write on.
//! Reads see every answered write (WAL readers start a fresh snapshot per statement outside
//! a transaction).
//!
//! Not here: connection pools. One reader is enough for the short indexed reads we do.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

/// The page size of a new database. Every commit writes each page it changed to the WAL
/// whole, and a step changes a few rows in several b-trees: smaller pages than SQLite's
/// 4096 bytes write fewer bytes per step, while an execution's row still fits one page.
const PAGE_SIZE: i64 = 2048;

/// At most this many writes share one transaction.
const MAX_BATCH: usize = 512;

/// A write job: runs on the connection (inside its savepoint), or is told why it cannot;
/// says whether to keep its changes and gives back what answers the caller once the batch
/// is committed.
type WriteJob = Box<dyn FnOnce(Result<&Connection, String>) -> (bool, Reply) + Send>;
/// Answers a write's caller with the batch's commit result.
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A read job.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Whether a write must be on disk (fsynced) before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    Full,
    Normal,
}

/// A database file served by a writer and a reader thread. Dropping it lets both threads
/// finish what is queued and waits until they have closed their connections.
pub struct Db {
    path: PathBuf,
    writer: mpsc::Sender<(Sync, WriteJob)>,
    reader: mpsc::Sender<ReadJob>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Db {
    fn drop(&mut self) {
        // Replacing the senders drops ours, which ends each thread's receive loop.
        self.writer = mpsc::channel().0;
        self.reader = mpsc::channel().0;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Opens a connection the way every embedded database is opened: WAL, a busy timeout, and
/// `synchronous=FULL`, so a commit is on disk when it returns.
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| {
            failure(
                rusqlite::ffi::SQLITE_CANTOPEN,
                format!("cannot create the directory {}: {err}", dir.display()),
            )
        })?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Only a new database takes it (before WAL mode is set); an existing one keeps its own.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn failure(code: std::os::raw::c_int, message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(message))
}

fn stopped(path: &Path) -> rusqlite::Error {
    failure(
        rusqlite::ffi::SQLITE_MISUSE,
        format!("the database thread of {} has stopped", path.display()),
    )
}

impl Db {
    /// Opens `path` (creating it), runs `init` (the schema) on the write connection, and starts
    /// the two threads, named after `name`.
    pub fn open(
        path: &Path,
        name: &str,
        init: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<Self> {
        let write_conn = connect(path)?;
        init(&write_conn)?;
        let read_conn = connect(path)?;
        read_conn.pragma_update(None, "query_only", true)?;
        let (writer, writes) = mpsc::channel::<(Sync, WriteJob)>();
        let (reader, reads) = mpsc::channel::<ReadJob>();
        let spawn_error = |err: std::io::Error| {
            failure(
                rusqlite::ffi::SQLITE_ERROR,
                format!("cannot start a database thread: {err}"),
            )
        };
        let write_thread = std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || write_loop(write_conn, &writes))
            .map_err(spawn_error)?;
        let read_thread = std::thread::Builder::new()
            .name(format!("{name}-reader"))
            .spawn(move || {
                while let Ok(job) = reads.recv() {
                    job(&read_conn);
                }
            })
            .map_err(spawn_error)?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            reader,
            threads: vec![write_thread, read_thread],
        })
    }

    /// Runs `job` on the write connection, in a transaction shared with other writes; its
    /// changes are kept when it returns `Ok`, and the answer comes once they are on disk.
    pub async fn write<R, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        self.queue_write(Sync::Full, job).await
    }

    /// Like [`Db::write`], answered once committed but before an fsync: for changes a
    /// power loss may undo because they are redone from an earlier durable state (the next
    /// step of an execution, a place in line).
    pub async fn write_relaxed<R, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        self.queue_write(Sync::Normal, job).await
    }

    async fn queue_write<R, E>(
        &self,
        sync: Sync,
        job: impl FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<R, E>>();
        let boxed: WriteJob = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => job(conn),
                Err(message) => Err(failure(rusqlite::ffi::SQLITE_IOERR, message).into()),
            };
            let keep = result.is_ok();
            let reply: Reply = Box::new(move |committed| {
                let answer_value = match committed {
                    Ok(()) => result,
                    Err(message) => Err(failure(rusqlite::ffi::SQLITE_IOERR, message).into()),
                };
                let _ = answer.send(answer_value);
            });
            (keep, reply)
        });
        if self.writer.send((sync, boxed)).is_err() {
            return Err(stopped(&self.path).into());
        }
        answered
            .await
            .unwrap_or_else(|_| Err(stopped(&self.path).into()))
    }

    /// Runs `job` on the read connection.
    pub async fn read<R, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<R, E>>();
        let boxed: ReadJob = Box::new(move |conn| {
            let _ = answer.send(job(conn));
        });
        if self.reader.send(boxed).is_err() {
            return Err(stopped(&self.path).into());
        }
        answered
            .await
            .unwrap_or_else(|_| Err(stopped(&self.path).into()))
    }
}

/// The writer thread: one transaction per batch of queued jobs, one savepoint per job.
fn write_loop(mut conn: Connection, writes: &mpsc::Receiver<(Sync, WriteJob)>) {
    let mut current = Sync::Full;
    while let Ok((first_sync, first)) = writes.recv() {
        let mut sync = first_sync;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match writes.try_recv() {
                Ok((job_sync, job)) => {
                    if job_sync == Sync::Full {
                        sync = Sync::Full;
                    }
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let committed = match set_sync(&conn, &mut current, sync) {
            Ok(()) => run_batch(&mut conn, batch, &mut replies),
            Err(message) => {
                for job in batch {
                    replies.push(job(Err(message.clone())).1);
                }
                Err(message)
            }
        };
        for reply in replies {
            reply(committed.clone());
        }
    }
}

/// Sets `synchronous` for the next commit (outside a transaction, where it takes effect).
fn set_sync(conn: &Connection, current: &mut Sync, wanted: Sync) -> Result<(), String> {
    if *current != wanted {
        let value = match wanted {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", value)
            .map_err(|err| format!("cannot set synchronous={value}: {err}"))?;
        *current = wanted;
    }
    Ok(())
}

fn run_batch(
    conn: &mut Connection,
    batch: Vec<WriteJob>,
    replies: &mut Vec<Reply>,
) -> Result<(), String> {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => {
            let message = format!("cannot begin a transaction: {err}");
            for job in batch {
                replies.push(job(Err(message.clone())).1);
            }
            return Err(message);
        }
    };
    // After a failure the batch is rolled back: the remaining jobs are told, not run.
    let mut failed: Option<String> = None;
    for job in batch {
        if let Some(message) = &failed {
            replies.push(job(Err(message.clone())).1);
            continue;
        }
        match tx.savepoint() {
            Ok(savepoint) => {
                let (keep, reply) = job(Ok(&savepoint));
                replies.push(reply);
                // A dropped savepoint rolls back that job's changes only.
                if keep && let Err(err) = savepoint.commit() {
                    failed = Some(err.to_string());
                }
            }
            Err(err) => {
                let message = err.to_string();
                replies.push(job(Err(message.clone())).1);
                failed = Some(message);
            }
        }
    }
    if let Some(message) = failed {
        return Err(message);
    }
    tx.commit().map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Db {
        Db::open(&dir.join("t.db"), "test", |conn| {
            conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);")
        })
        .expect("open")
    }

    async fn count(db: &Db) -> i64 {
        db.read(|conn| conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get::<_, i64>(0)))
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn concurrent_writes_are_all_kept_and_a_failed_one_only_undoes_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = std::sync::Arc::new(open(dir.path()));
        let mut writes = Vec::new();
        for i in 0..100 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write(move |conn| {
                    conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (format!("k{i}"), i))
                        .map(|_| ())
                })
                .await
            }));
        }
        for write in writes {
            write.await.expect("join").expect("insert");
        }
        // Inserts a row, then fails: its row must not stay.
        let failed: rusqlite::Result<()> = db
            .write(|conn| {
                conn.execute("INSERT INTO t (k, v) VALUES ('extra', 1)", [])?;
                conn.execute("INSERT INTO t (k, v) VALUES ('k1', 1)", [])?;
                Ok(())
            })
            .await;
        assert!(failed.is_err(), "a duplicate key must fail");
        assert_eq!(count(&db).await, 100);
        let mode: String = db
            .read(|conn| conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)))
            .await
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn the_read_connection_refuses_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let refused: rusqlite::Result<usize> = db
            .read(|conn| conn.execute("INSERT INTO t (k, v) VALUES ('x', 1)", []))
            .await;
        assert!(refused.is_err());
    }

    async fn page_size(db: &Db) -> i64 {
        db.read(|conn| conn.query_row("PRAGMA page_size", [], |row| row.get(0)))
            .await
            .expect("page size")
    }

    #[tokio::test]
    async fn a_new_database_gets_the_small_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        assert_eq!(page_size(&db).await, PAGE_SIZE);
        drop(db);
        let old = dir.path().join("old.db");
        let conn = Connection::open(&old).expect("open");
        conn.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO t VALUES ('a', 1);")
            .expect("old database");
        drop(conn);
        let db = Db::open(&old, "test", |_| Ok(())).expect("reopen");
        assert_eq!(page_size(&db).await, 4096);
        assert_eq!(count(&db).await, 1);
    }
}
