//! The worker host: one long-lived process per data directory that runs the local tasks.
//!
//! `taskrunner worker-host --data-dir D` is started by the API server on demand
//! ([`super::worker::LocalWorker`]), in a session of its own, so the tasks outlive a crash or
//! restart of the server. It holds an exclusive `flock` on `D/worker-host.pid` (which holds
//! its pid) and listens on the owner-only socket `D/worker-host.sock`. The server sends one
//! JSON line per message ([`ToHost`]: start a task, stop one); the host runs each task's
//! [`supervise`] on its own event loop (the task file itself is `bash` or `python3`, spawned
//! directly), records the task's phases and its end in the worker directory,
//! and answers [`FromHost::Ended`] once `end.json` is written. A restarted server connects to
//! the same host and reads from the worker directories what ended meanwhile. If the host
//! itself dies, the tasks it ran are reported as vanished (their start lock holds the host's
//! pid), never as running forever.
//!
//! The host exits once no server has been connected and no task has run for [`IDLE_EXIT`].

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::layout::WorkerDir;
use super::supervisor::{SupervisorInput, become_subreaper, enter_own_session, supervise};

/// The host's lock and pid file in the data directory.
pub const HOST_PID_FILE: &str = "worker-host.pid";
/// The host's socket in the data directory.
pub const HOST_SOCKET: &str = "worker-host.sock";
/// The host's own output (its errors; task output goes to the task logs).
pub const HOST_LOG: &str = "worker-host.log";
/// How long the host stays without a server and without tasks before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// A message from the API server to the host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHost {
    /// Run a task in `workers/<task_id>` (already holding its start lock and spec).
    Start {
        /// The task's supervisor input (secret values included).
        input: Box<SupervisorInput>,
    },
    /// Stop a running task (its terminate marker is written already).
    Terminate {
        /// The task.
        task_id: String,
    },
}

/// A message from the host to the API server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromHost {
    /// The first line on every connection.
    Hello {
        /// The host's pid, which every worker it runs records as its supervisor.
        pid: u32,
    },
    /// A task's `end.json` is written.
    Ended {
        /// The task.
        task_id: String,
    },
}

/// One JSON line.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The body of `taskrunner worker-host --data-dir D --nice N`; returns the process exit
/// code. Runs itself and its tasks `nice` levels below the priority it was started with.
/// Exits at once, with 0, when another host holds the data directory.
pub fn run_host(data_dir: &Path, nice: u8) -> i32 {
    enter_own_session();
    // In the new session's autogroup, before any thread exists: all inherit it.
    super::priority::lower(nice);
    become_subreaper();
    if let Err(error) = std::fs::create_dir_all(data_dir) {
        eprintln!("cannot create {}: {error}", data_dir.display());
        return 1;
    }
    let _lock = match own_host_lock(data_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => return 0,
        Err(error) => {
            eprintln!("worker host: {error}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("worker host: cannot start the async runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(serve_host(data_dir.to_owned())) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("worker host: {error}");
            1
        }
    }
}

/// The exclusive lock on `D/worker-host.pid`, with our pid written in it; `None` when
/// another host holds it.
fn own_host_lock(data_dir: &Path) -> Result<Option<std::fs::File>, String> {
    use std::io::Write;
    let path = data_dir.join(HOST_PID_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Some(file))
}

/// What the host's connections and tasks share.
#[derive(Default)]
struct HostState {
    /// The stop switch of each running task.
    tasks: HashMap<String, watch::Sender<bool>>,
    /// Where `Ended` goes: the newest server connection, with its number.
    server: Option<(u64, mpsc::UnboundedSender<Vec<u8>>)>,
    connections: u64,
    /// Process groups of ended tasks that still had members (orphans to reap).
    lingering: HashSet<i32>,
}

type Shared = Arc<Mutex<HostState>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, HostState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve_host(data_dir: PathBuf) -> Result<(), String> {
    let socket = data_dir.join(HOST_SOCKET);
    // We hold the lock: a socket file left here is from a host that died.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", socket.display()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let state: Shared = Arc::default();
    let mut idle_since = Some(tokio::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connect(stream, &state, &data_dir);
                }
            }
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                reap_lingering(&state);
                let idle = {
                    let state = lock(&state);
                    state.server.is_none() && state.tasks.is_empty()
                };
                match (idle, idle_since) {
                    (false, _) => idle_since = None,
                    (true, None) => idle_since = Some(tokio::time::Instant::now()),
                    (true, Some(since)) if since.elapsed() >= IDLE_EXIT => break,
                    (true, Some(_)) => {}
                }
            }
        }
    }
    // No new connection may find a host that is going away.
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    // SIGTERM (not a terminate from the server): every task stops and records why.
    for stop in lock(&state).tasks.values() {
        let _ = stop.send(true);
    }
    for _ in 0..200 {
        if lock(&state).tasks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Takes a new server connection: it replaces the previous one as the receiver of `Ended`.
fn connect(stream: UnixStream, state: &Shared, data_dir: &Path) {
    let (reader, mut writer) = stream.into_split();
    let (sender, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    let hello = FromHost::Hello {
        pid: std::process::id(),
    };
    let _ = sender.send(encode_line(&hello));
    let number = {
        let mut state = lock(state);
        state.connections += 1;
        state.server = Some((state.connections, sender));
        state.connections
    };
    tokio::spawn(async move {
        while let Some(line) = outgoing.recv().await {
            if writer.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let state = Arc::clone(state);
    let data_dir = data_dir.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ToHost>(&line) {
                Ok(ToHost::Start { input }) => start(&state, &data_dir, *input),
                Ok(ToHost::Terminate { task_id }) => {
                    if let Some(stop) = lock(&state).tasks.get(&task_id) {
                        let _ = stop.send(true);
                    }
                }
                // Neither the line nor serde's message (it may quote a value): a start
                // carries secret values.
                Err(error) => eprintln!(
                    "worker host: a message that does not parse (column {})",
                    error.column()
                ),
            }
        }
        let mut state = lock(&state);
        if state.server.as_ref().is_some_and(|(n, _)| *n == number) {
            state.server = None;
        }
    });
}

/// Runs a task's supervisor on the host's event loop. A task runs once: a start of a task
/// that runs, or that has ended (its `end.json` is written before it leaves `tasks`), is
/// ignored; the server sends a start again when it cannot tell whether we had it.
fn start(state: &Shared, data_dir: &Path, input: SupervisorInput) {
    // A parsed task id: a path component, nothing more.
    let task_id = input.spec.task_id.to_string();
    let worker = WorkerDir::new(data_dir.join("workers").join(&task_id));
    let (stop, stopped) = watch::channel(false);
    {
        let mut state = lock(state);
        if state.tasks.contains_key(&task_id) || worker.end().exists() {
            return;
        }
        state.tasks.insert(task_id.clone(), stop);
    }
    let state = Arc::clone(state);
    tokio::spawn(async move {
        if let Err(error) = supervise(worker.clone(), input, stopped).await {
            eprintln!("cannot write {}: {error}", worker.end().display());
        }
        let pgid = super::layout::task_group(&worker);
        let mut state = lock(&state);
        state.tasks.remove(&task_id);
        if let Some(pgid) = pgid.filter(|pgid| super::layout::group_exists(*pgid)) {
            state.lingering.insert(pgid);
        }
        if let Some((_, server)) = &state.server {
            let _ = server.send(encode_line(&FromHost::Ended { task_id }));
        }
    });
}

/// Reaps the exited orphans of ended tasks' process groups (they came to us as the
/// subreaper); forgets a group once nothing of it is left.
fn reap_lingering(state: &Shared) {
    lock(state).lingering.retain(|pgid| {
        loop {
            let mut status = 0;
            // SAFETY: waitpid on the members of one ended task's group, never on -1.
            let pid = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                // -1: no child of ours left in it; 0: members still running.
                return pid == 0;
            }
        }
    });
}
