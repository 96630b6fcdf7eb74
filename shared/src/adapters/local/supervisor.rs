//! The supervisor: what runs one task inside the worker host ([`super::host`]) and records
//! how it ended.
//!
//! It gets its input (the spec and the secret values) from the host's socket only, clones
//! the repositories, runs the startup script and the task, masks secret values in the log,
//! enforces the timeout, stops the task when told to, and writes `end.json`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::watch;
use tokio::time::Instant;

use super::git::{RepoClone, error_line};
use super::layout::{
    KILL_GRACE, Phase, TerminateMarker, WorkerDir, read_json, signal_ok, write_json, write_pid,
};
use super::limits::Limits;
use super::mask::{LineMasker, Masker};
use super::spawn::{Launch, Process, output_pipe};
use super::workspace;
use crate::ports::{Outcome, TaskEnd, TerminateReason};
use crate::secret::Secret;
use crate::task::{Interpreter, TaskSpec};

/// Environment variables of the supervisor that the task inherits; everything else is dropped.
const INHERITED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "USER"];

/// A secret value on its way to the worker host: the only place a [`Secret`] is serialized,
/// and only into the host's socket (owner-only, in the data directory).
#[derive(Clone, Debug, Deserialize)]
pub struct PipedSecret(pub Secret);

impl Serialize for PipedSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.expose())
    }
}

/// A task secret: the value and the environment variable that receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSecret {
    /// Environment variable name.
    pub env: String,
    /// The value.
    pub value: PipedSecret,
}

/// What a task's supervisor gets from the API server (through the worker host), as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SupervisorInput {
    /// The task.
    pub spec: TaskSpec,
    /// The values of `spec.secrets`, in order.
    pub task_secrets: Vec<TaskSecret>,
    /// The token of each `spec.git` entry (same order), when it names a secret.
    pub git_tokens: Vec<Option<PipedSecret>>,
    /// The deployment's tasks directory, searched first for the task file.
    pub tasks_dir: Option<PathBuf>,
    /// The Python interpreter.
    pub python: String,
    /// The task's workspace.
    pub workspace: PathBuf,
    /// The task's log file.
    pub log_file: PathBuf,
    /// Variables the deployment sets for every task (`TASKRUNNER_API_URL`, `PATH`); they
    /// win over the inherited ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Runs the task described by `input` in the worker directory `worker` until it ends, or
/// until `stop` turns true (a terminate, or the host's own SIGTERM; the terminate marker, if
/// any, says which), and writes its `end.json`.
pub async fn supervise(
    worker: WorkerDir,
    input: SupervisorInput,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(input.spec.timeout_seconds);
    let end = match Supervisor::new(worker.clone(), &input, deadline, stop) {
        Ok(mut supervisor) => supervisor.run().await,
        Err(reason) => ended(Outcome::Error, None, reason, None),
    };
    write_json(&worker.end(), &end)
}

/// Puts the worker host in a session of its own, so that the server's terminal, its signals
/// and its death do not reach the tasks. Call it first thing in the host process:
/// [`super::worker::LocalWorker`] starts it without a pre_exec hook (so with posix_spawn),
/// hence not as a group leader, and setsid succeeds.
pub fn enter_own_session() {
    // SAFETY: setsid only changes this process's session; it touches no memory.
    if unsafe { libc::setsid() } < 0 {
        eprintln!(
            "warning: the worker host cannot start a session of its own: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Makes orphaned descendants of the task our children, so that we can reap them and their
/// process group really disappears even where PID 1 does not reap.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

fn ended(
    outcome: Outcome,
    exit_code: Option<i32>,
    reason: String,
    started_at: Option<DateTime<Utc>>,
) -> TaskEnd {
    TaskEnd {
        outcome,
        exit_code,
        reason: Some(reason),
        started_at,
        finished_at: Utc::now(),
    }
}

/// Why a running command was stopped before it exited.
enum Stop {
    Timeout,
    Terminated,
}

/// How a command ended, with the tail of its (masked) output.
struct Exited {
    status: ExitStatus,
    tail: String,
}

struct Supervisor<'a> {
    worker: WorkerDir,
    input: &'a SupervisorInput,
    masker: Masker,
    log: Arc<Mutex<File>>,
    deadline: Instant,
    stop: watch::Receiver<bool>,
}

impl<'a> Supervisor<'a> {
    fn new(
        worker: WorkerDir,
        input: &'a SupervisorInput,
        deadline: Instant,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, String> {
        if let Some(logs) = input.log_file.parent() {
            std::fs::create_dir_all(logs)
                .map_err(|e| format!("cannot create the log directory {}: {e}", logs.display()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&input.log_file)
            .map_err(|e| format!("cannot open the log {}: {e}", input.log_file.display()))?;
        let secrets = input
            .task_secrets
            .iter()
            .map(|s| &s.value.0)
            .chain(input.git_tokens.iter().flatten().map(|t| &t.0));
        Ok(Self {
            worker,
            input,
            masker: Masker::new(secrets),
            log: Arc::new(Mutex::new(log)),
            deadline,
            stop,
        })
    }

    async fn run(&mut self) -> TaskEnd {
        if let Some(marker) = read_json::<TerminateMarker>(&self.worker.terminate_marker()) {
            return end_for_marker(Some(marker.reason), None);
        }
        let spec = &self.input.spec;
        // Only a phase that lasts: each write of phase.json is a new file and a rename.
        if !spec.git.is_empty() || spec.startup_script.is_some() {
            let _ = write_json(&self.worker.phase(), &Phase::Preparing);
        }
        let workspace = &self.input.workspace;
        let with_tasks = self
            .input
            .tasks_dir
            .as_ref()
            .is_some_and(|dir| dir.join(spec.task_file.as_str()).is_file());
        if let Err(e) = workspace::create(workspace, with_tasks) {
            let reason = format!("cannot create the workspace {}: {e}", workspace.display());
            return ended(Outcome::Error, None, reason, None);
        }
        if let Err(end) = self.clone_all().await {
            return end;
        }
        let (file, root) = match self.locate_task_file() {
            Ok(found) => found,
            Err(reason) => return ended(Outcome::Error, None, reason, None),
        };
        if let Err(end) = self.run_startup_script().await {
            return end;
        }
        self.run_task(&file, &root).await
    }

    async fn clone_all(&mut self) -> Result<(), TaskEnd> {
        let input = self.input;
        for (i, source) in input.spec.git.iter().enumerate() {
            let clone = RepoClone {
                source,
                token: input
                    .git_tokens
                    .get(i)
                    .and_then(|t| t.as_ref())
                    .map(|t| &t.0),
                bypass_ssl_verification: input.spec.bypass_ssl_verification,
            };
            let fail = |reason: String| ended(Outcome::Error, None, reason, None);
            let destination = clone
                .destination(&input.workspace)
                .map_err(|e| fail(format!("git_configs[{i}]: {e}")))?;
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
            }
            self.note(&format!(
                "cloning {} into {}",
                clone.display_url(),
                source.local_path
            ));
            for step in clone.steps(&destination) {
                match self.run_logged(clone.command(&step), None).await {
                    Ok(exited) if exited.status.success() => {}
                    Ok(exited) => return Err(fail(clone.failure(&error_line(&exited.tail)))),
                    Err(stop) => return Err(self.stopped(stop, None)),
                }
            }
        }
        Ok(())
    }

    /// The task file and the directory it runs in: the tasks directory (copied into the
    /// workspace) first, then the checkout of the first repository.
    fn locate_task_file(&self) -> Result<(PathBuf, PathBuf), String> {
        let input = self.input;
        let name = input.spec.task_file.as_str();
        let mut looked = Vec::new();
        if let Some(tasks_dir) = &input.tasks_dir {
            let candidate = tasks_dir.join(name);
            if candidate.is_file() {
                let copy = input.workspace.join(workspace::TASKS);
                workspace::sync_tasks(tasks_dir, &copy).map_err(|e| {
                    format!(
                        "cannot copy the tasks directory {} into the workspace: {e}",
                        tasks_dir.display()
                    )
                })?;
                return Ok((copy.join(name), copy));
            }
            looked.push(format!("the tasks directory ({})", candidate.display()));
        } else {
            looked.push("the tasks directory (none configured)".to_owned());
        }
        match input.spec.git.first() {
            Some(first) => {
                let root = input.workspace.join(&first.local_path);
                let candidate = root.join(name);
                if candidate.is_file() {
                    return Ok((candidate, root));
                }
                looked.push(format!(
                    "the checkout of git_configs[0] ({})",
                    candidate.display()
                ));
            }
            None => looked.push("a git checkout (no git_configs given)".to_owned()),
        }
        Err(format!(
            "task file {name:?} not found: looked in {}",
            looked.join(" and in ")
        ))
    }

    async fn run_startup_script(&mut self) -> Result<(), TaskEnd> {
        let Some(script) = &self.input.spec.startup_script else {
            return Ok(());
        };
        self.note("running the startup script");
        let mut command = Launch::new("bash");
        command
            .arg("-c")
            .arg(script)
            .current_dir(&self.input.workspace)
            .limits(self.limits());
        self.task_env(&mut command);
        match self.run_logged(command, None).await {
            Ok(exited) if exited.status.success() => Ok(()),
            Ok(exited) => Err(ended(
                Outcome::Error,
                exited.status.code(),
                format!("the startup script failed ({})", describe(exited.status)),
                None,
            )),
            Err(stop) => Err(self.stopped(stop, None)),
        }
    }

    async fn run_task(&mut self, file: &Path, root: &Path) -> TaskEnd {
        let mut command = match self.input.spec.task_file.interpreter() {
            Interpreter::Python => {
                let mut c = Launch::new(&self.input.python);
                c.arg("-u");
                c
            }
            Interpreter::Bash => Launch::new("bash"),
        };
        command.arg(file).current_dir(root).limits(self.limits());
        self.task_env(&mut command);
        let started_at = Utc::now();
        self.note(&format!("running {}", self.input.spec.task_file));
        match self.run_logged(command, Some(started_at)).await {
            Ok(exited) => {
                let status = exited.status;
                let (outcome, reason) = match status.code() {
                    Some(0) => (Outcome::Succeeded, None),
                    Some(_) => (
                        Outcome::Failed,
                        Some(format!("the task {}", describe(status))),
                    ),
                    None => (
                        Outcome::Failed,
                        Some(format!("the task was {}", describe(status))),
                    ),
                };
                TaskEnd {
                    outcome,
                    exit_code: status.code(),
                    reason,
                    started_at: Some(started_at),
                    finished_at: Utc::now(),
                }
            }
            Err(stop) => self.stopped(stop, Some(started_at)),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            cpus: self.input.spec.worker.cpus,
            memory_mib: self.input.spec.worker.memory_mib,
        }
    }

    /// The task's environment: cleared, then only what the task is meant to see.
    fn task_env(&self, command: &mut Launch) {
        let input = self.input;
        let spec = &input.spec;
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("HOME", &input.workspace)
            .env("TMPDIR", input.workspace.join(workspace::TMP))
            .env("PYTHONUNBUFFERED", "1")
            .envs(&spec.env)
            .envs(&input.env);
        for secret in &input.task_secrets {
            command.env(&secret.env, secret.value.0.expose());
        }
        command
            .env("TASKRUNNER_TASK_ID", spec.task_id.as_str())
            .env("TASKRUNNER_WORKSPACE", &input.workspace);
        let optional = [
            ("LOG_LEVEL", &spec.log_level),
            ("MODULES_LOG_LEVEL", &spec.modules_log_level),
            ("TASKRUNNER_OWNER_EMAIL", &spec.email),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
    }

    /// A line of our own in the task log.
    fn note(&self, text: &str) {
        let line = format!("[taskrunner] {}\n", self.masker.mask_str(text));
        if let Ok(mut log) = self.log.lock() {
            let _ = log.write_all(line.as_bytes());
        }
    }

    /// The end of a task stopped by the timeout or by a stop.
    fn stopped(&self, stop: Stop, started_at: Option<DateTime<Utc>>) -> TaskEnd {
        match stop {
            Stop::Timeout => {
                let reason = format!(
                    "the task ran past its timeout of {} seconds and was stopped",
                    self.input.spec.timeout_seconds
                );
                self.note(&reason);
                ended(Outcome::TimedOut, None, reason, started_at)
            }
            Stop::Terminated => {
                let marker = read_json::<TerminateMarker>(&self.worker.terminate_marker());
                let end = end_for_marker(marker.map(|m| m.reason), started_at);
                if let Some(reason) = &end.reason {
                    self.note(reason);
                }
                end
            }
        }
    }

    /// Runs `command` in its own process group, its output masked into the log, until it
    /// exits, the deadline passes, or a stop arrives (then its group is stopped). With
    /// `running` (the task itself, not a clone or the startup script), the group is recorded
    /// with the running phase.
    async fn run_logged(
        &mut self,
        command: Launch,
        running: Option<DateTime<Utc>>,
    ) -> Result<Exited, Stop> {
        let (reader, writer) = match output_pipe() {
            Ok(ends) => ends,
            Err(e) => {
                self.note(&format!("cannot create a pipe: {e}"));
                return Ok(Exited {
                    status: failed_status(),
                    tail: e.to_string(),
                });
            }
        };
        let stderr = match writer.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                return Ok(Exited {
                    status: failed_status(),
                    tail: e.to_string(),
                });
            }
        };
        // Off the event loop: spawning returns once the child has exec'd, which takes as
        // long as the child waits for the CPU it is pinned to, and the host's other tasks
        // must not wait with it. Our copies of the pipe's write end are closed by then, or
        // the reader would never see the end.
        let spawned = tokio::task::spawn_blocking(move || command.spawn(writer, stderr))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let tail = format!("cannot start the process: {e}");
                self.note(&tail);
                return Ok(Exited {
                    status: failed_status(),
                    tail,
                });
            }
        };
        let pgid = child.id();
        let _ = match running {
            Some(started_at) => {
                let phase = Phase::Running {
                    started_at,
                    pgid: Some(pgid),
                };
                write_json(&self.worker.phase(), &phase)
            }
            None => write_pid(&self.worker.task_pgid(), pgid as u32),
        };
        let pump = pump_output(
            reader,
            LineMasker::new(self.masker.clone()),
            self.log.clone(),
        );

        let mut stop = self.stop.clone();
        let result = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => Err(Stop::Terminated),
            _ = tokio::time::sleep_until(self.deadline) => Err(Stop::Timeout),
            status = child.wait() => match status {
                // `terminate` signals the group too: its marker tells a cancel from an exit.
                Ok(_) if self.worker.terminate_marker().exists() => Err(Stop::Terminated),
                Ok(status) => Ok(status),
                Err(e) => {
                    self.note(&format!("lost the process: {e}"));
                    Ok(failed_status())
                }
            },
        };
        if result.is_err() {
            stop_group(&mut child, pgid).await;
        }
        // Background processes may keep the pipe open: do not wait for them forever.
        let tail = tokio::time::timeout(std::time::Duration::from_secs(2), pump)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        result.map(|status| Exited { status, tail })
    }
}

/// The end when the task was stopped by `terminate` (or by someone else's SIGTERM).
fn end_for_marker(reason: Option<TerminateReason>, started_at: Option<DateTime<Utc>>) -> TaskEnd {
    let (outcome, text) = match reason {
        Some(TerminateReason::Cancelled) => (Outcome::Cancelled, "the task was cancelled"),
        Some(TerminateReason::TimedOut) => (
            Outcome::TimedOut,
            "the task ran past its timeout and was stopped",
        ),
        Some(TerminateReason::Completed | TerminateReason::Cleanup) => (
            Outcome::Cancelled,
            "the worker was terminated by the cleanup sweep",
        ),
        None => (
            Outcome::Error,
            "the worker was stopped by a SIGTERM that did not come from taskrunner",
        ),
    };
    ended(outcome, None, text.to_owned(), started_at)
}

/// SIGTERM to the group, SIGKILL after the grace period, then reap what is left of it.
async fn stop_group(child: &mut Process, pgid: i32) {
    signal_ok(-pgid, libc::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_ok(-pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever of the group outlived its leader (a `sleep` in a script) goes too.
    signal_ok(-pgid, libc::SIGKILL);
    reap_group(pgid).await;
}

/// Reaps the group's orphans, which came to us as the subreaper.
async fn reap_group(pgid: i32) {
    for _ in 0..50 {
        let mut status = 0;
        // SAFETY: waitpid on the group's members only; the leader is reaped already.
        let pid = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if pid < 0 {
            return; // no child left in the group
        }
        if pid == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Reads the pipe, masks line by line, appends to the log; gives back the last lines of
/// output (masked) at the end of the stream.
fn pump_output(
    reader: OwnedFd,
    mut masker: LineMasker,
    log: Arc<Mutex<File>>,
) -> tokio::sync::oneshot::Receiver<String> {
    let (done, receiver) = tokio::sync::oneshot::channel();
    // On the event loop, not a thread per task: the host runs many tasks at once.
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut tail: VecDeque<u8> = VecDeque::new();
        let mut buf = [0u8; 8192];
        let write = |bytes: &[u8], tail: &mut VecDeque<u8>| {
            if bytes.is_empty() {
                return;
            }
            if let Ok(mut log) = log.lock() {
                let _ = log.write_all(bytes);
            }
            tail.extend(bytes);
            while tail.len() > 4096 {
                tail.pop_front();
            }
        };
        match tokio::net::unix::pipe::Receiver::from_owned_fd(reader) {
            Ok(mut reader) => loop {
                match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => write(&masker.push(&buf[..n]), &mut tail),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            },
            Err(e) => write(
                format!("cannot read the output: {e}\n").as_bytes(),
                &mut tail,
            ),
        }
        write(&masker.finish(), &mut tail);
        let tail: Vec<u8> = tail.into();
        let _ = done.send(String::from_utf8_lossy(&tail).into_owned());
    });
    receiver
}

fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(127 << 8)
}

/// "exited with code 2", "killed by signal 9".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended for an unknown reason".to_owned(),
    }
}
