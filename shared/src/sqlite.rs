//! A SQLite database kept off the async runtime: one writer thread owns the write
//! connection, one reader thread owns a read connection, and async code hands them closures
//! through channels and awaits the answer.
//!
//! Writes are group-committed: the writer takes queued jobs, runs each in its own savepoint
//! inside one transaction, commits once, and only then answers. A batch holding a
//! [`Db::write`] commits with `synchronous=FULL` (one fsync of the WAL for the whole batch,
//! which also makes every earlier commit durable): an answered `write` is on disk. A batch of
//! [`Db::write_relaxed`] only commits with `synchronous=NORMAL`: it survives a crash or
//! `kill -9` of the process at once, and a power loss from the next durable write on.
//!
//! Durable writes are what callers wait on (an accepted task, a stored secret, a cancel), so
//! they are taken before relaxed ones (the steps that follow) and batched apart from them,
//! and a batch stops taking jobs after [`BATCH_BUDGET`] of work: under a burst of steps a
//! durable write waits for at most the batch being run, not for everything queued before it,
//! and its answer does not wait for steps run after it. A relaxed write that has waited
//! [`RELAXED_WAIT_MAX`] goes first: new tasks arriving without pause cannot hold back the
//! tasks already accepted for longer. Two writes that are pending at once have no order
//! between them; a caller that awaits one write before the next keeps its own order.
//! Reads see every answered write (WAL readers start a fresh snapshot per statement outside
//! a transaction).
//!
//! Checkpoints (copying the WAL back into the database file) run on a third thread with a
//! connection of its own, not inside the commit that fills the WAL as SQLite does by default:
//! a checkpoint copies about a thousand pages and fsyncs the database file, and every write
//! queued behind that commit waited for it. A passive checkpoint runs alongside the writer.
//!
//! Not here: connection pools. One reader is enough for the short indexed reads we do.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

/// The page size of a new database. Every commit writes each page it changed to the WAL
/// whole, and a step changes a few rows in several b-trees: smaller pages than SQLite's
/// 4096 bytes write fewer bytes per step, while an execution's row still fits one page.
const PAGE_SIZE: i64 = 2048;

/// At most this many writes share one transaction.
const MAX_BATCH: usize = 512;

/// Once the WAL holds this many pages, the writer asks for a checkpoint (SQLite's own
/// default threshold).
const CHECKPOINT_PAGES: i32 = 1000;

/// A relaxed write queued this long ago goes before the durable ones.
const RELAXED_WAIT_MAX: Duration = Duration::from_millis(10);

/// A batch takes no more jobs once it has run this long: what a durable write may wait for
/// behind a batch of steps (plus the jobs before it in its own batch and the commit).
const BATCH_BUDGET: Duration = Duration::from_millis(1);

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
    writes: Arc<WriteQueue>,
    reader: mpsc::Sender<ReadJob>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Db {
    fn drop(&mut self) {
        // The writer runs what is queued, then ends; replacing the read sender drops ours,
        // which ends the reader's receive loop.
        self.writes.close();
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
        let mut write_conn = connect(path)?;
        init(&write_conn)?;
        let checkpoint_conn = connect(path)?;
        // At most one request waits: a checkpoint copies every page committed before it.
        let (checkpoint, checkpoints) = mpsc::sync_channel::<()>(1);
        // Replaces SQLite's own checkpoint-on-commit, which is a hook like this one.
        write_conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            if pages >= CHECKPOINT_PAGES {
                let _ = checkpoint.try_send(());
            }
            Ok(())
        }))?;
        let read_conn = connect(path)?;
        read_conn.pragma_update(None, "query_only", true)?;
        let writes = Arc::new(WriteQueue::default());
        let (reader, reads) = mpsc::channel::<ReadJob>();
        let spawn_error = |err: std::io::Error| {
            failure(
                rusqlite::ffi::SQLITE_ERROR,
                format!("cannot start a database thread: {err}"),
            )
        };
        let write_thread = {
            let writes = Arc::clone(&writes);
            std::thread::Builder::new()
                .name(format!("{name}-writer"))
                .spawn(move || write_loop(write_conn, &writes))
                .map_err(spawn_error)?
        };
        let read_thread = std::thread::Builder::new()
            .name(format!("{name}-reader"))
            .spawn(move || {
                while let Ok(job) = reads.recv() {
                    job(&read_conn);
                }
            })
            .map_err(spawn_error)?;
        // Ends when the writer's connection, which holds the sender, is closed.
        let checkpoint_thread = std::thread::Builder::new()
            .name(format!("{name}-checkpoint"))
            .spawn(move || {
                let mut failing = false;
                while checkpoints.recv().is_ok() {
                    failing = checkpoint_wal(&checkpoint_conn, failing);
                }
            })
            .map_err(spawn_error)?;
        Ok(Self {
            path: path.to_owned(),
            writes,
            reader,
            threads: vec![write_thread, read_thread, checkpoint_thread],
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
        if !self.writes.push(sync, boxed) {
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

/// Copies what it can of the WAL into the database file without waiting for readers or the
/// writer; says whether it failed. A failure is only logged, once until a checkpoint
/// succeeds again (`failing`: the last one failed): the WAL keeps the pages, and the next
/// request retries.
fn checkpoint_wal(conn: &Connection, failing: bool) -> bool {
    let database = || conn.path().unwrap_or_default().to_owned();
    match conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE) {
        Err(err) => {
            if !failing {
                tracing::warn!(
                    database = %database(),
                    error = %err,
                    "a checkpoint failed; the write-ahead log grows until one succeeds"
                );
            }
            true
        }
        Ok(_) => {
            if failing {
                tracing::info!(database = %database(), "checkpoints succeed again");
            }
            false
        }
    }
}

/// The writes waiting for the writer thread, durable ones apart.
#[derive(Default)]
struct WriteQueue {
    pending: Mutex<Pending>,
    queued: Condvar,
}

struct Pending {
    durable: VecDeque<WriteJob>,
    /// With the time each was queued.
    relaxed: VecDeque<(Instant, WriteJob)>,
    closed: bool,
    /// [`RELAXED_WAIT_MAX`], but for tests.
    relaxed_wait_max: Duration,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            durable: VecDeque::new(),
            relaxed: VecDeque::new(),
            closed: false,
            relaxed_wait_max: RELAXED_WAIT_MAX,
        }
    }
}

impl WriteQueue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `job`; false once the queue is closed.
    fn push(&self, sync: Sync, job: WriteJob) -> bool {
        let mut pending = self.lock();
        if pending.closed {
            return false;
        }
        match sync {
            Sync::Full => pending.durable.push_back(job),
            Sync::Normal => pending.relaxed.push_back((Instant::now(), job)),
        }
        drop(pending);
        self.queued.notify_one();
        true
    }

    fn close(&self) {
        self.lock().closed = true;
        self.queued.notify_one();
    }

    /// Waits for a job; says how the batch it starts commits: durably when a durable job
    /// waits, unless the oldest relaxed job has waited [`RELAXED_WAIT_MAX`]. `None` once the
    /// queue is closed and empty.
    fn wait(&self) -> Option<Sync> {
        let mut pending = self.lock();
        loop {
            let overdue = pending
                .relaxed
                .front()
                .is_some_and(|(queued, _)| queued.elapsed() >= pending.relaxed_wait_max);
            if !pending.durable.is_empty() && !overdue {
                return Some(Sync::Full);
            }
            if !pending.relaxed.is_empty() {
                return Some(Sync::Normal);
            }
            if pending.closed {
                return None;
            }
            pending = self
                .queued
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// The next job for a batch that commits with `sync`: a batch takes only jobs of its
    /// own kind (a durable write's answer does not wait for the steps run after it).
    fn next(&self, sync: Sync) -> Option<WriteJob> {
        let mut pending = self.lock();
        match sync {
            Sync::Full => pending.durable.pop_front(),
            Sync::Normal => pending.relaxed.pop_front().map(|(_, job)| job),
        }
    }
}

/// The writer thread: one transaction per batch of queued jobs, one savepoint per job.
fn write_loop(mut conn: Connection, writes: &WriteQueue) {
    let mut current = Sync::Full;
    while let Some(sync) = writes.wait() {
        let mut replies = Vec::new();
        let committed = match set_sync(&conn, &mut current, sync) {
            Ok(()) => run_batch(&mut conn, writes, sync, &mut replies),
            Err(message) => {
                fail_next(writes, sync, &message, &mut replies);
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

/// Runs the jobs of one batch in a transaction and commits it: jobs are taken until none
/// is left, [`MAX_BATCH`] ran, or the batch has run for [`BATCH_BUDGET`].
fn run_batch(
    conn: &mut Connection,
    writes: &WriteQueue,
    sync: Sync,
    replies: &mut Vec<Reply>,
) -> Result<(), String> {
    let started = Instant::now();
    let next = |replies: &Vec<Reply>| {
        if replies.len() >= MAX_BATCH || (!replies.is_empty() && started.elapsed() >= BATCH_BUDGET)
        {
            return None;
        }
        writes.next(sync)
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => {
            let message = format!("cannot begin a transaction: {err}");
            fail_next(writes, sync, &message, replies);
            return Err(message);
        }
    };
    while let Some(job) = next(replies) {
        let savepoint = match tx.savepoint() {
            Ok(savepoint) => savepoint,
            Err(err) => {
                let message = err.to_string();
                replies.push(job(Err(message.clone())).1);
                return Err(message);
            }
        };
        let (keep, reply) = job(Ok(&savepoint));
        replies.push(reply);
        // A dropped savepoint rolls back that job's changes only. After a failure the batch
        // is rolled back and its jobs are told; the jobs not taken wait for the next batch.
        if keep && let Err(err) = savepoint.commit() {
            return Err(err.to_string());
        }
    }
    tx.commit().map_err(|err| err.to_string())
}

/// Tells the next job for a batch that commits with `sync` why it cannot run, so that an
/// error the writer cannot get past reaches the callers one by one instead of stalling them.
fn fail_next(writes: &WriteQueue, sync: Sync, message: &str, replies: &mut Vec<Reply>) {
    if let Some(job) = writes.next(sync) {
        replies.push(job(Err(message.to_owned())).1);
    }
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

    #[tokio::test]
    async fn a_durable_write_goes_before_the_relaxed_writes_queued_ahead_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(open(dir.path()));
        // However slowly this test queues, no relaxed write is overdue.
        db.writes.lock().relaxed_wait_max = Duration::from_secs(3600);
        let order = Arc::new(Mutex::new(Vec::<String>::new()));
        let insert = |name: String, order: Arc<Mutex<Vec<String>>>| {
            move |conn: &Connection| {
                order.lock().expect("order").push(name.clone());
                conn.execute("INSERT INTO t (k, v) VALUES (?1, 0)", [name])
                    .map(|_| ())
            }
        };
        // Holds the writer inside a relaxed batch while the others queue up.
        let (started, has_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let blocker = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write_relaxed(move |conn| {
                    let _ = started.send(());
                    let _ = released.recv();
                    // Spends the batch's time budget: it takes no job after this one.
                    std::thread::sleep(BATCH_BUDGET);
                    conn.execute("INSERT INTO t (k, v) VALUES ('blocker', 0)", [])
                        .map(|_| ())
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || has_started.recv())
            .await
            .expect("join")
            .expect("the blocker runs");
        let mut writes = Vec::new();
        for i in 0..20 {
            let (writer, job) = (db.clone(), insert(format!("relaxed{i}"), order.clone()));
            writes.push(tokio::spawn(async move { writer.write_relaxed(job).await }));
            // Queued one by one, so that the relaxed ones keep their order.
            while db.writes.lock().relaxed.len() <= i {
                tokio::task::yield_now().await;
            }
        }
        let (writer, job) = (db.clone(), insert("durable".into(), order.clone()));
        writes.push(tokio::spawn(async move { writer.write(job).await }));
        while db.writes.lock().durable.is_empty() {
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        blocker.await.expect("join").expect("blocker");
        for write in writes {
            write.await.expect("join").expect("insert");
        }
        let order = order.lock().expect("order").clone();
        let mut expected = vec!["durable".to_owned()];
        expected.extend((0..20).map(|i| format!("relaxed{i}")));
        assert_eq!(order, expected);
        assert_eq!(count(&db).await, 22);
    }

    #[test]
    fn durable_writes_arriving_without_pause_let_an_overdue_relaxed_one_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = table(dir.path());
        let queue = Arc::new(WriteQueue::default());
        let events = Arc::new(Mutex::new(Vec::new()));
        const LAST: usize = 40;
        // Each durable write takes a millisecond and, once committed, queues the next one:
        // a steady stream of 40 ms.
        fn durable(k: usize, queue: &Arc<WriteQueue>, events: &Arc<Mutex<Vec<String>>>) {
            let (queue_after, events_after) = (Arc::clone(queue), Arc::clone(events));
            let job = logged_job(k, Duration::from_millis(1), events);
            let chained: WriteJob = Box::new(move |conn| {
                let (keep, reply) = job(conn);
                let reply: Reply = Box::new(move |committed| {
                    reply(committed);
                    if k < LAST {
                        durable(k + 1, &queue_after, &events_after);
                    } else {
                        queue_after.close();
                    }
                });
                (keep, reply)
            });
            assert!(queue.push(Sync::Full, chained));
        }
        durable(0, &queue, &events);
        assert!(queue.push(Sync::Normal, logged_job(100, Duration::ZERO, &events)));
        write_loop(conn, &queue);
        let events = events.lock().expect("events").clone();
        let ran: Vec<&str> = events
            .iter()
            .filter_map(|e| e.strip_prefix("ran "))
            .collect();
        let relaxed = ran
            .iter()
            .position(|k| *k == "100")
            .expect("the relaxed write ran");
        // Once it has waited 10 ms (ten durable writes of 1 ms at least), the relaxed one.
        assert!(relaxed <= 11, "the relaxed write ran at {relaxed}: {ran:?}");
        assert_eq!(ran.len(), LAST + 2);
    }

    /// A job as [`Db`] builds them: inserts `k`, sleeping first, and reports when it ran and
    /// when its batch was committed.
    fn logged_job(k: usize, sleep: Duration, events: &Arc<Mutex<Vec<String>>>) -> WriteJob {
        let events = events.clone();
        Box::new(move |conn| {
            std::thread::sleep(sleep);
            let conn = conn.expect("a connection");
            conn.execute("INSERT INTO t (k, v) VALUES (?1, 0)", [format!("k{k}")])
                .expect("insert");
            events.lock().expect("events").push(format!("ran {k}"));
            let reply: Reply = Box::new(move |committed| {
                committed.expect("committed");
                events
                    .lock()
                    .expect("events")
                    .push(format!("committed {k}"));
            });
            (true, reply)
        })
    }

    fn table(dir: &Path) -> Connection {
        let conn = connect(&dir.join("t.db")).expect("connect");
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);")
            .expect("table");
        conn
    }

    #[test]
    fn a_long_queue_is_committed_in_batches_of_the_time_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = table(dir.path());
        let queue = WriteQueue::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        for k in 0..10 {
            assert!(queue.push(Sync::Normal, logged_job(k, BATCH_BUDGET / 2, &events)));
        }
        queue.close();
        write_loop(conn, &queue);
        let events = events.lock().expect("events").clone();
        let first_commit = events
            .iter()
            .position(|event| event == "committed 0")
            .expect("job 0 committed");
        let last_run = events
            .iter()
            .position(|event| event == "ran 9")
            .expect("job 9 ran");
        assert!(
            first_commit < last_run,
            "the first jobs must be committed before the queue is through: {events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| e.starts_with("committed")).count(),
            10
        );
    }

    #[test]
    fn a_closed_queue_runs_what_it_holds_and_refuses_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = table(dir.path());
        let queue = WriteQueue::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        assert!(queue.push(Sync::Full, logged_job(0, Duration::ZERO, &events)));
        assert!(queue.push(Sync::Normal, logged_job(1, Duration::ZERO, &events)));
        queue.close();
        assert!(!queue.push(Sync::Full, logged_job(2, Duration::ZERO, &events)));
        write_loop(conn, &queue);
        assert_eq!(
            *events.lock().expect("events"),
            ["ran 0", "committed 0", "ran 1", "committed 1"]
        );
        let conn = connect(&dir.path().join("t.db")).expect("reopen");
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 2);
    }

    #[tokio::test]
    async fn the_checkpoint_thread_copies_a_full_wal_into_the_database_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let file = dir.path().join("t.db");
        let written = 2 * CHECKPOINT_PAGES as u64 * PAGE_SIZE as u64;
        let row = "x".repeat(16 * 1024);
        for i in 0..written / row.len() as u64 {
            let row = row.clone();
            db.write(move |conn| {
                conn.execute("INSERT INTO t (k, v) VALUES (?1, 0)", [format!("{i}{row}")])
                    .map(|_| ())
            })
            .await
            .expect("insert");
        }
        // Nothing else copies the WAL back while the database is open: the file grows only
        // through the checkpoint thread.
        let deadline = Instant::now() + Duration::from_secs(30);
        let size = || std::fs::metadata(&file).map_or(0, |meta| meta.len());
        while size() < written / 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(size() >= written / 2, "database file: {} bytes", size());
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
