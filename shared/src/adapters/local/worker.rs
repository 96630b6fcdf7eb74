//! `LocalWorker`: the embedded mode's [`WorkerBackend`], a task as a local process.
//!
//! Each task runs in the data directory's worker host ([`super::host`]), a detached process in
//! its own session, so it survives a crash or restart of the API server. The server sends the
//! host starts and stops over its socket ([`super::link`]); everything else the two sides
//! share is the worker directory `data_dir/workers/<task_id>/`. The workspace is
//! `data_dir/workspaces/<task_id>/` and the log `data_dir/logs/<task_id>.log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::host::{HOST_PID_FILE, ToHost};
use super::layout::{
    KILL_GRACE, Phase, TerminateMarker, WorkerDir, group_exists, process_exists, read_json,
    read_pid, signal_ok, task_group, write_json,
};
use super::link::{Connection, HostLink, LostHook};
use super::records::LazyRecords;
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
    /// The program started as the worker host (the `taskrunner` binary).
    pub supervisor_program: PathBuf,
    /// Its arguments before `--data-dir <data dir>` (default `["worker-host"]`).
    pub supervisor_args: Vec<String>,
    /// How long the workspace of a task with `terminate_on_completion: false` is kept after
    /// the task ends (default one hour).
    pub keep_workspace_for: Duration,
    /// The Python interpreter (default `python3`).
    pub python: String,
    /// How many nice levels below `serve` the worker host and its tasks run (default 10).
    pub task_nice: u8,
}

impl LocalWorkerConfig {
    /// The defaults, with the data directory and the `taskrunner` binary given.
    pub fn new(data_dir: impl Into<PathBuf>, supervisor_program: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            tasks_dir: None,
            supervisor_program: supervisor_program.into(),
            supervisor_args: vec!["worker-host".to_owned()],
            keep_workspace_for: Duration::from_secs(3600),
            python: "python3".to_owned(),
            task_nice: 10,
        }
    }
}

/// Runs tasks as local processes in the detached worker host.
pub struct LocalWorker {
    config: LocalWorkerConfig,
    host: HostLink,
    secrets: Arc<dyn SecretStore>,
    on_end: Option<TaskEndHook>,
    tokens: TaskTokens,
    api_url: OnceLock<String>,
    records: LazyRecords,
    /// The pid of the host this server last connected to (0: none yet).
    last_host: AtomicI32,
}

/// The environment variable a task finds its task token in.
pub const TASK_TOKEN_ENV: &str = "TASKRUNNER_TASK_TOKEN";

impl LocalWorker {
    /// A backend over `config`, reading secret values from `secrets`.
    pub fn new(config: LocalWorkerConfig, secrets: Arc<dyn SecretStore>) -> Self {
        Self {
            host: HostLink::new(
                &config.data_dir,
                &config.supervisor_program,
                &config.supervisor_args,
                config.task_nice,
            ),
            config,
            tokens: TaskTokens::new(Arc::clone(&secrets)),
            secrets,
            on_end: None,
            api_url: OnceLock::new(),
            records: LazyRecords::default(),
            last_host: AtomicI32::new(0),
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

    /// After a restart: watches the workers whose task has not ended (the host's messages
    /// went to the previous server) and calls the end hook when they end. Needs a tokio
    /// runtime.
    pub fn reattach(&self) {
        if let Some(hook) = self.on_end.clone() {
            watch_unended(&self.config.data_dir, hook);
        }
    }

    /// The connection to the worker host, which is started if none runs.
    async fn host(&self) -> Result<Connection, PortError> {
        let on_end = self
            .on_end
            .clone()
            .unwrap_or_else(|| Arc::new(|_: &str| {}));
        // Lost: the host died, so its tasks end as vanished; wake the ones not ended yet.
        let on_lost: LostHook = match self.on_end.clone() {
            Some(hook) => {
                let data_dir = self.config.data_dir.clone();
                Arc::new(move || watch_unended(&data_dir, hook.clone()))
            }
            None => Arc::new(|| {}),
        };
        let connection = self
            .host
            .connection(on_end, on_lost)
            .await
            .map_err(PortError::Transient)?;
        self.last_host.store(connection.pid, Ordering::Relaxed);
        Ok(connection)
    }

    /// Whether `pid` is the data directory's worker host (the one that holds its lock now,
    /// or held it last).
    fn is_host(&self, pid: i32) -> bool {
        // The host we talk to needs no read of its pid file (asked on every status).
        pid == self.last_host.load(Ordering::Relaxed)
            || read_pid(&self.config.data_dir.join(HOST_PID_FILE)) == Some(pid)
    }

    fn worker_dir(&self, task_id: &str) -> WorkerDir {
        worker_dir(&self.config.data_dir, task_id)
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
        worker_ids(&self.config.data_dir)
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

    /// Creates the start lock, which names the host and holds the spec; false when another
    /// start of the task took the lock first (that one sends it).
    fn take_start_lock(worker: &WorkerDir, spec: &TaskSpec, host: i32) -> Result<bool, PortError> {
        let record = serde_json::to_vec(&StartRecord {
            pid: host,
            spec: spec.clone(),
        })
        .map_err(|e| PortError::Permanent(e.to_string()))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(worker.start_lock())
        {
            Ok(mut lock) => {
                use std::io::Write;
                lock.write_all(&record)
                    .map_err(|e| io_error("write", &worker.start_lock(), e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_error("create", &worker.start_lock(), e)),
        }
    }

    /// Names `host` in the start lock, if it names another (a host that is gone).
    fn record_host(worker: &WorkerDir, host: i32) -> Result<(), PortError> {
        match read_json::<StartRecord>(&worker.start_lock()) {
            Some(mut record) if record.pid != host => {
                record.pid = host;
                write_json(&worker.start_lock(), &record)
                    .map_err(|e| io_error("write", &worker.start_lock(), e))
            }
            _ => Ok(()),
        }
    }

    /// Hands the task to the worker host, whose pid the start lock holds.
    async fn hand_to_host(
        &self,
        worker: &WorkerDir,
        input: SupervisorInput,
        host: Connection,
    ) -> Result<(), PortError> {
        let message = ToHost::Start {
            input: Box::new(input),
        };
        if host.send(&message).await {
            return Ok(());
        }
        // The connection closed just now: once more, with a new host (and its pid).
        let host = self.host().await?;
        Self::record_host(worker, host.pid)?;
        if host.send(&message).await {
            return Ok(());
        }
        Err(PortError::Transient(
            "the worker host closed its connection".to_owned(),
        ))
    }

    /// The task's process group, when it still has members.
    fn live_group(worker: &WorkerDir) -> Option<i32> {
        task_group(worker).filter(|pgid| group_exists(*pgid))
    }

    /// The process that runs the task and has not recorded its end: the worker host (until
    /// `end.json` is written), or a supervisor process of an older version.
    fn live_supervisor(&self, worker: &WorkerDir) -> Option<i32> {
        self.alive_unended(supervisor_pid(worker), worker)
    }

    /// `supervisor` (the pid the worker's records name), when it runs and, being the host,
    /// has not recorded the task's end yet.
    fn alive_unended(&self, supervisor: Option<i32>, worker: &WorkerDir) -> Option<i32> {
        supervisor
            .filter(|pid| process_exists(*pid))
            .filter(|pid| !(self.is_host(*pid) && worker.end().exists()))
    }

    fn kept_until(worker: &WorkerDir) -> Option<DateTime<Utc>> {
        read_json(&worker.keep_until())
    }

    /// A stop to the host (SIGTERM to an older version's supervisor) and SIGTERM to the
    /// task's group; SIGKILL to the group after the grace period, and to an old supervisor a
    /// little later (it needs a moment to write its end).
    async fn stop_processes(&self, task_id: &str, worker: &WorkerDir, started: &Started) {
        let supervisor = self.alive_unended(started.supervisor, worker);
        let hosted = supervisor.is_some_and(|pid| self.is_host(pid));
        let group = Self::live_group(worker);
        if hosted {
            if let Ok(host) = self.host().await {
                host.send(&ToHost::Terminate {
                    task_id: task_id.to_owned(),
                })
                .await;
            }
        } else if let Some(pid) = supervisor {
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
            let supervisor_alive = match supervisor {
                Some(pid) if hosted => process_exists(pid) && !worker.end().exists(),
                Some(pid) => process_exists(pid),
                None => false,
            };
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
                if let Some(pid) = supervisor.filter(|_| supervisor_alive && !hosted) {
                    signal_ok(pid, libc::SIGKILL);
                }
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// What the start lock holds: the host that runs the task and the task's spec (secret names
/// only), in one file, as every file a task creates costs.
#[derive(serde::Serialize, serde::Deserialize)]
struct StartRecord {
    pid: i32,
    spec: TaskSpec,
}

/// The pid of the process that runs the task: the worker host's, from the start lock; an
/// older version's supervisor wrote its own into `supervisor.pid`.
fn supervisor_pid(worker: &WorkerDir) -> Option<i32> {
    Started::read(worker).supervisor
}

/// What the start left in a worker directory: the pid that runs the task and its spec,
/// read at once (the start record holds the whole spec; an older version wrote
/// `supervisor.pid` and `spec.json`).
struct Started {
    supervisor: Option<i32>,
    spec: Option<TaskSpec>,
}

impl Started {
    fn read(worker: &WorkerDir) -> Self {
        match read_json::<StartRecord>(&worker.start_lock()) {
            Some(record) => Self {
                supervisor: Some(record.pid),
                spec: Some(record.spec),
            },
            None => Self {
                supervisor: read_pid(&worker.supervisor_pid()),
                spec: read_json(&worker.spec()),
            },
        }
    }
}

fn worker_dir(data_dir: &Path, task_id: &str) -> WorkerDir {
    WorkerDir::new(data_dir.join("workers").join(task_id))
}

/// The task ids that have a worker directory.
fn worker_ids(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("workers")) else {
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

/// Watches the workers that were started and have not recorded an end, and calls `hook`
/// for each once it has ended or its supervisor (the host) is gone.
fn watch_unended(data_dir: &Path, hook: TaskEndHook) {
    let mut watched: Vec<(String, WorkerDir)> = worker_ids(data_dir)
        .into_iter()
        .map(|id| {
            let dir = worker_dir(data_dir, &id);
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
                let alive = supervisor_pid(dir).is_some_and(process_exists);
                let over = dir.end().exists() || !alive;
                if over {
                    hook(id);
                }
                !over
            });
        }
    });
}

/// What the files of a worker say about its task.
fn task_phase(worker: &WorkerDir, started: &Started) -> TaskPhase {
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
    let Some(pid) = started.supervisor else {
        return TaskPhase::Pending;
    };
    if process_exists(pid) {
        return match read_json::<Phase>(&worker.phase()) {
            Some(Phase::Preparing) => TaskPhase::Preparing,
            Some(Phase::Running { started_at, .. }) => TaskPhase::Running { started_at },
            None => TaskPhase::Pending,
        };
    }
    // It may have written its end just now.
    if let Some(end) = read_json::<TaskEnd>(&worker.end()) {
        return TaskPhase::Ended(end);
    }
    let started_at = match read_json::<Phase>(&worker.phase()) {
        Some(Phase::Running { started_at, .. }) => Some(started_at),
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
        if worker.terminate_marker().exists() {
            return Ok(handle);
        }
        // A start lock without a phase or an end: an earlier start of this task took the lock
        // and did not return (the server was killed), so its host may never have had the
        // task. It is sent again; a host runs a task once, however often it is sent.
        let sent_before = worker.start_lock().exists();
        if sent_before && (worker.phase().exists() || worker.end().exists()) {
            return Ok(handle);
        }
        let (mut task_secrets, git_tokens) = self.fetch_secrets(spec).await?;
        let (env, token) = self.chain_env(spec).await?;
        task_secrets.extend(token);
        std::fs::create_dir_all(&worker.dir)
            .map_err(|e| io_error("create the worker directory", &worker.dir, e))?;
        let host = self.host().await?;
        if sent_before {
            Self::record_host(&worker, host.pid)?;
        } else if !Self::take_start_lock(&worker, spec, host.pid)? {
            return Ok(handle);
        }
        // Terminated between our first look and the lock: never start.
        if worker.terminate_marker().exists() {
            return Ok(handle);
        }
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
        if let Err(error) = self.hand_to_host(&worker, input, host).await {
            if !sent_before {
                let _ = std::fs::remove_file(worker.start_lock());
            }
            return Err(error);
        }
        Ok(handle)
    }

    async fn status(&self, handle: &WorkerHandle) -> Result<WorkerStatus, PortError> {
        let task_id = Self::task_id_of(handle)?;
        let worker = self.worker_dir(&task_id);
        let started = Started::read(&worker);
        let task = task_phase(&worker, &started);
        let kept = started
            .spec
            .is_some_and(|spec| !spec.terminate_on_completion)
            && self.workspace(&task_id).exists();
        let worker_alive = kept
            || self.alive_unended(started.supervisor, &worker).is_some()
            || Self::live_group(&worker).is_some();
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
        // A task that ended needs no marker to be told from a cancel: end.json says.
        let ended = reason == TerminateReason::Completed && worker.end().exists();
        if !ended && !worker.terminate_marker().exists() {
            let marker = TerminateMarker {
                reason,
                at: Utc::now(),
            };
            write_json(&worker.terminate_marker(), &marker)
                .map_err(|e| io_error("write", &worker.terminate_marker(), e))?;
        }
        let started = Started::read(&worker);
        let keep = reason == TerminateReason::Completed
            && started
                .spec
                .as_ref()
                .is_some_and(|s| !s.terminate_on_completion);
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
        self.stop_processes(&task_id, &worker, &started).await;
        super::workspace::remove(&workspace, self.config.tasks_dir.as_deref())
            .map_err(|e| io_error("remove the workspace", &workspace, e))?;
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
            let holds_resources = self.live_supervisor(&worker).is_some()
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
        let task_id = Self::task_id_of(handle)?;
        self.records
            .get(&self.config.data_dir)?
            .record_delivery(&task_id, delivery)
            .await
    }

    async fn recorded_delivery(
        &self,
        handle: &WorkerHandle,
    ) -> Result<Option<DeliveryRecord>, PortError> {
        let task_id = Self::task_id_of(handle)?;
        self.records
            .get(&self.config.data_dir)?
            .delivery(&task_id)
            .await
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
