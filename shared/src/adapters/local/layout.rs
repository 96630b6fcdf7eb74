//! Where a local worker keeps its state, and the small helpers both sides use on it.
//!
//! The API server and the worker host share a worker directory per task,
//! `data_dir/workers/<task_id>/`, of small files written atomically: the host's messages only
//! say that something changed, the files say what.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::ports::TerminateReason;

/// The files of one worker.
#[derive(Clone, Debug)]
pub struct WorkerDir {
    /// `data_dir/workers/<task_id>`.
    pub dir: PathBuf,
}

impl WorkerDir {
    /// The worker directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Created (exclusively) when a start hands the task to the worker host; it holds the
    /// host's pid and the task spec (secret names only), as JSON.
    pub fn start_lock(&self) -> PathBuf {
        self.dir.join("started")
    }
    /// The pid of an older version's supervisor process, which ran one task.
    pub fn supervisor_pid(&self) -> PathBuf {
        self.dir.join("supervisor.pid")
    }
    /// The pid (= process group id) of the process the task's supervisor runs now.
    pub fn task_pgid(&self) -> PathBuf {
        self.dir.join("task.pgid")
    }
    /// The current [`Phase`].
    pub fn phase(&self) -> PathBuf {
        self.dir.join("phase.json")
    }
    /// The [`crate::ports::TaskEnd`], once the task is over.
    pub fn end(&self) -> PathBuf {
        self.dir.join("end.json")
    }
    /// The [`TerminateMarker`], written before the worker is signalled.
    pub fn terminate_marker(&self) -> PathBuf {
        self.dir.join("terminate.json")
    }
    /// The task spec, as an older version wrote it (now in the start lock).
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    /// Until when a kept workspace stays (RFC 3339).
    pub fn keep_until(&self) -> PathBuf {
        self.dir.join("keep_until.json")
    }
}

/// What the supervisor is doing, as written to `phase.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Cloning, looking for the task file, running the startup script.
    Preparing,
    /// The task file runs.
    Running {
        /// Since when.
        started_at: DateTime<Utc>,
        /// The task's process group (one file fewer than `task.pgid`, which holds the group
        /// of the clones and of the startup script).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pgid: Option<i32>,
    },
}

/// Why a worker is being terminated, written before any signal is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateMarker {
    /// The reason given to `terminate`.
    pub reason: TerminateReason,
    /// When.
    pub at: DateTime<Utc>,
}

/// The process group of what the worker runs now: the task's (in `phase.json`) once it
/// runs, before that the one in `task.pgid`.
pub fn task_group(worker: &WorkerDir) -> Option<i32> {
    match read_json::<Phase>(&worker.phase()) {
        Some(Phase::Running {
            pgid: Some(pgid), ..
        }) => Some(pgid),
        _ => read_pid(&worker.task_pgid()),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes `value` as JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Reads JSON from `path`; `None` when the file does not exist or does not parse.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Reads a pid written by [`write_pid`].
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// Writes a pid, atomically.
pub fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
    write_atomic(path, pid.to_string().as_bytes())
}

/// Whether a process with this pid exists (a zombie counts).
pub fn process_exists(pid: i32) -> bool {
    signal_ok(pid, 0)
}

/// Whether a process group with this id has any member left.
pub fn group_exists(pgid: i32) -> bool {
    signal_ok(-pgid, 0)
}

/// Sends `signal` to `target` (a pid, or minus a process group id). Refuses 0, 1 and -1.
pub fn signal_ok(target: i32, signal: i32) -> bool {
    if matches!(target, -1..=1) {
        return false;
    }
    // SAFETY: kill only sends a signal; the target is never 0, 1 or -1 (ourselves, init, all).
    let rc = unsafe { libc::kill(target, signal) };
    // EPERM: it exists but belongs to someone else.
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// How long a process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
