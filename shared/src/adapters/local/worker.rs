//! `LocalWorker`: the embedded mode's [`WorkerBackend`], a task as a local process.
//!
//! Each task runs under a detached supervisor ([`super::supervisor`]) in its own session, so it
//! survives a crash or restart of the API server. The two sides share only the worker
//! directory `data_dir/workers/<task_id>/`; the workspace is `data_dir/workspaces/<task_id>/`
//! and the log `data_dir/logs/<task_id>.log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::layout::{
    KILL_GRACE, Phase, TerminateMarker, WorkerDir, group_exists, process_exists, read_json,
    read_pid, signal_ok, write_json,
};
use super::supervisor::{PipedSecret, SupervisorInput, TaskSecret};
use crate::auth::task_token::TaskTokens;
use crate::ports::{
    DeliveryRecord, LogTail, Outcome, PortError, SecretStore, TaskEnd, TaskPhase, TerminateReason,
    WorkerBackend, WorkerHandle, WorkerStatus, WorkerSummary,
};
use crate::secret::Secret;
use crate::task::{TaskId, TaskSpec};

/// The backend name in handles.
pub const BACKEND: &str = "local";

/// How often [`LocalWorker::reattach`] looks at the workers it watches.
const REATTACH_POLL: Duration = Duration::from_millis(250);

/// Called with the task id when a worker's task ends.
pub type TaskEndHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Where and how local workers run.
#[derive(Clone, Debug)]
pub struct LocalWorkerConfig {
    /// Workers live under `data_dir/workers/<task_id>/`, workspaces under
    /// `data_dir/workspaces/<task_id>/`, logs in `data_dir/logs/<task_id>.log`.
    pub data_dir: PathBuf,
    /// The deployment's tasks directory, searched first for the task file.
    pub tasks_dir: Option<PathBuf>,
    /// The program run as the supervisor (the `taskrunner` binary).
    pub supervisor_program: PathBuf,
    /// Its arguments before `--dir <worker dir>` (default `["worker-supervise"]`).
    pub supervisor_args: Vec<String>,
    /// How long the workspace of a task with `terminate_on_completion: false` is kept after
    /// the task ends (default one hour).
    pub keep_workspace_for: Duration,
    /// The Python interpreter (default `python3`).
    pub python: String,
}

impl LocalWorkerConfig {
    /// The defaults, with the data directory and the `taskrunner` binary given.
    pub fn new(data_dir: impl Into<PathBuf>, supervisor_program: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            tasks_dir: None,
            supervisor_program: supervisor_program.into(),
            supervisor_args: vec!["worker-supervise".to_owned()],
            keep_workspace_for: Duration::from_secs(3600),
            python: "python3".to_owned(),
        }
    }
}

/// Runs tasks as local processes under detached supervisors.
pub struct LocalWorker {
    config: LocalWorkerConfig,
    secrets: Arc<dyn SecretStore>,
    on_end: Option<TaskEndHook>,
    tokens: TaskTokens,
    api_url: OnceLock<String>,
}

/// The environment variable a task finds its task token in.
pub const TASK_TOKEN_ENV: &str = "TASKRUNNER_TASK_TOKEN";

impl LocalWorker {
    /// A backend over `config`, reading secret values from `secrets`.
    pub fn new(config: LocalWorkerConfig, secrets: Arc<dyn SecretStore>) -> Self {
        Self {
            config,
            tokens: TaskTokens::new(Arc::clone(&secrets)),
            secrets,
            on_end: None,
            api_url: OnceLock::new(),
        }
    }

    /// The API tasks started from now on reach (`TASKRUNNER_API_URL`), with a task token
    /// (`TASKRUNNER_TASK_TOKEN`) to start children. Without it, tasks get neither.
    pub fn serve_tasks_at(&self, api_url: impl Into<String>) {
        let _ = self.api_url.set(api_url.into());
    }

    /// What chaining adds to a task's environment: the API's URL and the `taskrunner`
    /// binary's directory first on `PATH`, and the task token (a secret: masked, piped).
    async fn chain_env(
        &self,
        spec: &TaskSpec,
    ) -> Result<(BTreeMap<String, String>, Option<TaskSecret>), PortError> {
        let mut env = BTreeMap::new();
        if let Some(bin) = self.config.supervisor_program.parent() {
            let path = std::env::var("PATH").unwrap_or_default();
            env.insert(
                "PATH".to_owned(),
                format!("{}:{path}", bin.display())
                    .trim_end_matches(':')
                    .to_owned(),
            );
        }
        let Some(url) = self.api_url.get() else {
            return Ok((env, None));
        };
        env.insert("TASKRUNNER_API_URL".to_owned(), url.clone());
        let token = self.tokens.mint_for(spec).await?;
        Ok((
            env,
            Some(TaskSecret {
                env: TASK_TOKEN_ENV.to_owned(),
                value: PipedSecret(token),
            }),
        ))
    }

    /// Called with the task id whenever a worker's task ends (to wake the waiting execution).
    pub fn on_task_end(&mut self, hook: TaskEndHook) {
        self.on_end = Some(hook);
    }

    /// After a restart: watches the workers whose task has not ended (their supervisors are
    /// no longer our children) and calls the end hook when they end. Needs a tokio runtime.
    pub fn reattach(&self) {
        let Some(hook) = self.on_end.clone() else {
            return;
        };
        let mut watched: Vec<(String, WorkerDir)> = self
            .worker_ids()
            .into_iter()
            .map(|id| {
                let dir = self.worker_dir(&id);
                (id, dir)
            })
            .filter(|(_, dir)| dir.start_lock().exists() && !dir.end().exists())
            .collect();
        if watched.is_empty() {
            return;
        }
        tokio::spawn(async move {
            while !watched.is_empty() {
                tokio::time::sleep(REATTACH_POLL).await;
                watched.retain(|(id, dir)| {
                    let alive = read_pid(&dir.supervisor_pid()).is_some_and(process_exists);
                    let over = dir.end().exists() || !alive;
                    if over {
                        hook(id);
                    }
                    !over
                });
            }
        });
    }

    fn worker_dir(&self, task_id: &str) -> WorkerDir {
        WorkerDir::new(self.config.data_dir.join("workers").join(task_id))
    }

    fn workspace(&self, task_id: &str) -> PathBuf {
        self.config.data_dir.join("workspaces").join(task_id)
    }

    fn log_file(&self, task_id: &str) -> PathBuf {
        self.config
            .data_dir
            .join("logs")
            .join(format!("{task_id}.log"))
    }

    /// The task ids that have a worker directory.
    fn worker_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("workers")) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| TaskId::parse(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    /// The task id of a handle of ours, or why it is not one.
    fn task_id_of(handle: &WorkerHandle) -> Result<String, PortError> {
        if handle.backend != BACKEND {
            return Err(PortError::Permanent(format!(
                "worker handle of backend {:?} given to the local worker backend",
                handle.backend
            )));
        }
        TaskId::parse(&handle.id)
            .map(String::from)
            .map_err(|e| PortError::Permanent(format!("worker handle id {:?}: {e}", handle.id)))
    }

    /// The secret values the task needs, or which one is missing and how to add it.
    async fn fetch_secrets(
        &self,
        spec: &TaskSpec,
    ) -> Result<(Vec<TaskSecret>, Vec<Option<PipedSecret>>), PortError> {
        let mut task_secrets = Vec::new();
        for wanted in &spec.secrets {
            let value = self.fetch(&wanted.secret, "personal/shared secret").await?;
            task_secrets.push(TaskSecret {
                env: wanted.env.clone(),
                value: PipedSecret(value),
            });
        }
        let mut git_tokens = Vec::new();
        for (i, source) in spec.git.iter().enumerate() {
            let token = match &source.secret_name {
                Some(name) => {
                    let field = format!("git_configs[{i}].secret_name");
                    Some(PipedSecret(self.fetch(name, &field).await?))
                }
                None => None,
            };
            git_tokens.push(token);
        }
        Ok((task_secrets, git_tokens))
    }

    async fn fetch(&self, name: &str, field: &str) -> Result<Secret, PortError> {
        self.secrets.get(name).await?.ok_or_else(|| {
            PortError::Permanent(format!(
                "{field} {name:?} is not in the secret store; add it with `taskrunner secret set {name}`"
            ))
        })
    }

    /// Spawns the supervisor in its own session and hands it its input through stdin.
    async fn spawn_supervisor(
        &self,
        worker: &WorkerDir,
        input: &SupervisorInput,
    ) -> Result<(), String> {
        let output = std::fs::File::create(worker.supervisor_log())
            .map_err(|e| format!("cannot create {}: {e}", worker.supervisor_log().display()))?;
        let errors = output.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.config.supervisor_program);
        command
            .args(&self.config.supervisor_args)
            .arg("--dir")
            .arg(&worker.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors));
        // No pre_exec hook: without one the child is started with posix_spawn (vfork-like),
        // not fork, which would copy the server's page tables and make it take a
        // copy-on-write fault for every page it touches afterwards. The supervisor puts
        // itself in its own session first thing (`worker-supervise` calls `setsid`).
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot start the worker supervisor {}: {e}",
                self.config.supervisor_program.display()
            )
        })?;
        if let Some(pid) = child.id() {
            let _ = super::layout::write_pid(&worker.supervisor_pid(), pid);
        }
        let payload = serde_json::to_vec(input).map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            // A supervisor that died at once shows in status; the write error adds nothing.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
        let hook = self.on_end.clone();
        let task_id = input.spec.task_id.to_string();
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let Some(hook) = hook {
                hook(&task_id);
            }
        });
        Ok(())
    }

    /// The task's process group, when it still has members.
    fn live_group(worker: &WorkerDir) -> Option<i32> {
        read_pid(&worker.task_pgid()).filter(|pgid| group_exists(*pgid))
    }

    fn live_supervisor(worker: &WorkerDir) -> Option<i32> {
        read_pid(&worker.supervisor_pid()).filter(|pid| process_exists(*pid))
    }

    fn kept_until(worker: &WorkerDir) -> Option<DateTime<Utc>> {
        read_json(&worker.keep_until())
    }

    /// SIGTERM to the supervisor and the task's group; SIGKILL to the group after the grace
    /// period, and to the supervisor a little later (it needs a moment to write its end).
    async fn stop_processes(worker: &WorkerDir) {
        let supervisor = Self::live_supervisor(worker);
        let group = Self::live_group(worker);
        if let Some(pid) = supervisor {
            signal_ok(pid, libc::SIGTERM);
        }
        if let Some(pgid) = group {
            signal_ok(-pgid, libc::SIGTERM);
        }
        let poll = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        let supervisor_grace = KILL_GRACE + Duration::from_secs(2);
        let mut group_killed = false;
        loop {
            let supervisor_alive = supervisor.is_some_and(process_exists);
            let group_alive = group.is_some_and(group_exists);
            if !supervisor_alive && !group_alive {
                return;
            }
            let elapsed = started.elapsed();
            if group_alive && !group_killed && elapsed >= KILL_GRACE {
                if let Some(pgid) = group {
                    signal_ok(-pgid, libc::SIGKILL);
                }
                group_killed = true;
            }
            if elapsed >= supervisor_grace {
                if let Some(pid) = supervisor.filter(|_| supervisor_alive) {
                    signal_ok(pid, libc::SIGKILL);
                }
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// What the files of a worker say about its task.
fn task_phase(worker: &WorkerDir) -> TaskPhase {
    if let Some(end) = read_json::<TaskEnd>(&worker.end()) {
        return TaskPhase::Ended(end);
    }
    let marker = read_json::<TerminateMarker>(&worker.terminate_marker());
    if !worker.start_lock().exists() {
        return match marker {
            Some(marker) => TaskPhase::Ended(never_started(&marker)),
            None => TaskPhase::Pending,
        };
    }
    let Some(pid) = read_pid(&worker.supervisor_pid()) else {
        return TaskPhase::Pending;
    };
    if process_exists(pid) {
        return match read_json::<Phase>(&worker.phase()) {
            Some(Phase::Preparing) => TaskPhase::Preparing,
            Some(Phase::Running { started_at }) => TaskPhase::Running { started_at },
            None => TaskPhase::Pending,
        };
    }
    // It may have written its end just now.
    if let Some(end) = read_json::<TaskEnd>(&worker.end()) {
        return TaskPhase::Ended(end);
    }
    let started_at = match read_json::<Phase>(&worker.phase()) {
        Some(Phase::Running { started_at }) => Some(started_at),
        _ => None,
    };
    let finished_at = Utc::now();
    TaskPhase::Ended(match marker {
        Some(TerminateMarker {
            reason: TerminateReason::Cancelled,
            ..
        }) => TaskEnd {
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: Some("the task was cancelled".to_owned()),
            started_at,
            finished_at,
        },
        _ => TaskEnd {
            outcome: Outcome::Error,
            exit_code: None,
            reason: Some(
                "the worker process vanished (killed?) before reporting an end".to_owned(),
            ),
            started_at,
            finished_at,
        },
    })
}

/// The end of a task terminated before its worker started.
fn never_started(marker: &TerminateMarker) -> TaskEnd {
    let (outcome, reason) = match marker.reason {
        TerminateReason::TimedOut => (
            Outcome::TimedOut,
            "the task timed out before its worker started",
        ),
        _ => (
            Outcome::Cancelled,
            "the task was cancelled before its worker started",
        ),
    };
    TaskEnd {
        outcome,
        exit_code: None,
        reason: Some(reason.to_owned()),
        started_at: None,
        finished_at: marker.at,
    }
}

/// The last `max_bytes` of `bytes`, starting on a UTF-8 character boundary.
fn tail_text(bytes: &[u8], max_bytes: usize) -> LogTail {
    let truncated = bytes.len() > max_bytes;
    let mut start = bytes.len().saturating_sub(max_bytes);
    while start < bytes.len() && (bytes[start] & 0b1100_0000) == 0b1000_0000 {
        start += 1;
    }
    LogTail {
        text: String::from_utf8_lossy(&bytes[start..]).into_owned(),
        truncated,
    }
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> PortError {
    PortError::Transient(format!("cannot {what} {}: {error}", path.display()))
}

#[async_trait]
impl WorkerBackend for LocalWorker {
    async fn start(&self, spec: &TaskSpec) -> Result<WorkerHandle, PortError> {
        let task_id = spec.task_id.as_str();
        let handle = self.handle_for(&spec.task_id);
        let worker = self.worker_dir(task_id);
        if worker.start_lock().exists() || worker.terminate_marker().exists() {
            return Ok(handle);
        }
        let (mut task_secrets, git_tokens) = self.fetch_secrets(spec).await?;
        let (env, token) = self.chain_env(spec).await?;
        task_secrets.extend(token);
        std::fs::create_dir_all(&worker.dir)
            .map_err(|e| io_error("create the worker directory", &worker.dir, e))?;
        // The lock makes concurrent starts of one task start one supervisor.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(worker.start_lock())
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(handle),
            Err(e) => return Err(io_error("create", &worker.start_lock(), e)),
        }
        // Terminated between our first look and the lock: never start.
        if worker.terminate_marker().exists() {
            return Ok(handle);
        }
        write_json(&worker.spec(), spec).map_err(|e| io_error("write", &worker.spec(), e))?;
        let input = SupervisorInput {
            spec: spec.clone(),
            task_secrets,
            git_tokens,
            tasks_dir: self.config.tasks_dir.clone(),
            python: self.config.python.clone(),
            workspace: self.workspace(task_id),
            log_file: self.log_file(task_id),
            env,
        };
        if let Err(reason) = self.spawn_supervisor(&worker, &input).await {
            let _ = std::fs::remove_file(worker.start_lock());
            let _ = std::fs::remove_file(worker.supervisor_pid());
            return Err(PortError::Transient(reason));
        }
        Ok(handle)
    }

    async fn status(&self, handle: &WorkerHandle) -> Result<WorkerStatus, PortError> {
        let task_id = Self::task_id_of(handle)?;
        let worker = self.worker_dir(&task_id);
        let task = task_phase(&worker);
        let kept = read_json::<TaskSpec>(&worker.spec())
            .is_some_and(|spec| !spec.terminate_on_completion)
            && self.workspace(&task_id).exists();
        let worker_alive =
            Self::live_supervisor(&worker).is_some() || Self::live_group(&worker).is_some() || kept;
        Ok(WorkerStatus { task, worker_alive })
    }

    async fn log_tail(
        &self,
        handle: &WorkerHandle,
        max_bytes: usize,
    ) -> Result<LogTail, PortError> {
        let task_id = Self::task_id_of(handle)?;
        let path = self.log_file(&task_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("read", &path, e)),
        };
        Ok(tail_text(&bytes, max_bytes))
    }

    async fn terminate(
        &self,
        handle: &WorkerHandle,
        reason: TerminateReason,
    ) -> Result<(), PortError> {
        let task_id = Self::task_id_of(handle)?;
        let worker = self.worker_dir(&task_id);
        std::fs::create_dir_all(&worker.dir)
            .map_err(|e| io_error("create the worker directory", &worker.dir, e))?;
        if !worker.terminate_marker().exists() {
            let marker = TerminateMarker {
                reason,
                at: Utc::now(),
            };
            write_json(&worker.terminate_marker(), &marker)
                .map_err(|e| io_error("write", &worker.terminate_marker(), e))?;
        }
        let keep = reason == TerminateReason::Completed
            && read_json::<TaskSpec>(&worker.spec()).is_some_and(|s| !s.terminate_on_completion);
        let workspace = self.workspace(&task_id);
        if keep {
            if Self::kept_until(&worker).is_none() {
                let ended_at = read_json::<TaskEnd>(&worker.end())
                    .map_or_else(Utc::now, |end| end.finished_at);
                let keep_for = chrono::Duration::from_std(self.config.keep_workspace_for)
                    .unwrap_or(chrono::Duration::hours(1));
                write_json(&worker.keep_until(), &(ended_at + keep_for))
                    .map_err(|e| io_error("write", &worker.keep_until(), e))?;
            }
            return Ok(());
        }
        Self::stop_processes(&worker).await;
        match std::fs::remove_dir_all(&workspace) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove the workspace", &workspace, e)),
        }
        let _ = std::fs::remove_file(worker.keep_until());
        Ok(())
    }

    fn handle_for(&self, task_id: &TaskId) -> WorkerHandle {
        WorkerHandle {
            backend: BACKEND.to_owned(),
            id: task_id.to_string(),
        }
    }

    async fn list(&self) -> Result<Vec<WorkerSummary>, PortError> {
        let mut workers = Vec::new();
        for task_id in self.worker_ids() {
            let worker = self.worker_dir(&task_id);
            let holds_resources = Self::live_supervisor(&worker).is_some()
                || Self::live_group(&worker).is_some()
                || self.workspace(&task_id).exists();
            if !holds_resources {
                continue;
            }
            workers.push(WorkerSummary {
                handle: WorkerHandle {
                    backend: BACKEND.to_owned(),
                    id: task_id.clone(),
                },
                task_id: task_id.clone(),
                holds_resources,
                keep_until: Self::kept_until(&worker),
            });
        }
        Ok(workers)
    }

    async fn record_delivery(
        &self,
        handle: &WorkerHandle,
        delivery: &DeliveryRecord,
    ) -> Result<(), PortError> {
        let worker = self.worker_dir(&Self::task_id_of(handle)?);
        std::fs::create_dir_all(&worker.dir)
            .map_err(|e| io_error("create the worker directory", &worker.dir, e))?;
        write_json(&worker.delivery(), delivery)
            .map_err(|e| io_error("write", &worker.delivery(), e))
    }

    async fn recorded_delivery(
        &self,
        handle: &WorkerHandle,
    ) -> Result<Option<DeliveryRecord>, PortError> {
        let worker = self.worker_dir(&Self::task_id_of(handle)?);
        Ok(read_json(&worker.delivery()))
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
