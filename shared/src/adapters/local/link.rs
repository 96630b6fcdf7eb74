//! The API server's side of the worker host ([`super::host`]): finds the host of the data
//! directory or starts it, sends it starts and stops, and turns its `ended` lines into calls
//! of the end hook.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use super::host::{FromHost, HOST_LOG, HOST_SOCKET, ToHost, encode_line};

/// How long a start waits for a host to answer on its socket (started by us or not).
const HOST_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Called with a task id when the host reports its end.
pub type EndHook = Arc<dyn Fn(&str) + Send + Sync>;
/// Called once when the connection to the host is lost.
pub type LostHook = Arc<dyn Fn() + Send + Sync>;

/// A line to write to the host, and who waits for it to be written.
type Outgoing = (Vec<u8>, oneshot::Sender<()>);

/// A live connection: the host's pid and the queue of lines to send it.
#[derive(Clone)]
pub struct Connection {
    /// The host's pid, written into the start lock of every task it runs.
    pub pid: i32,
    out: mpsc::UnboundedSender<Outgoing>,
}

impl Connection {
    /// Sends `message` and waits until it is written to the host's socket: from then on the
    /// host reads it even if this process is killed. False when the connection is gone.
    pub async fn send(&self, message: &ToHost) -> bool {
        let (written, done) = oneshot::channel();
        self.out.send((encode_line(message), written)).is_ok() && done.await.is_ok()
    }
}

/// The server's link to the worker host of one data directory.
pub struct HostLink {
    data_dir: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    nice: u8,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl HostLink {
    /// A link that starts the host as `program args... --data-dir data_dir --nice nice`
    /// when none runs.
    pub fn new(data_dir: &Path, program: &Path, args: &[String], nice: u8) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            nice,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// The current connection, connecting first (and starting the host) if there is none.
    pub async fn connection(
        &self,
        on_end: EndHook,
        on_lost: LostHook,
    ) -> Result<Connection, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.out.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = self.connect(on_end, on_lost).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// The current connection, if one is open (never starts a host).
    pub async fn connected(&self) -> Option<Connection> {
        let slot = self.connection.lock().await;
        slot.as_ref().filter(|c| !c.out.is_closed()).cloned()
    }

    async fn connect(&self, on_end: EndHook, on_lost: LostHook) -> Result<Connection, String> {
        let socket = self.data_dir.join(HOST_SOCKET);
        let deadline = tokio::time::Instant::now() + HOST_START_TIMEOUT;
        let mut started: Option<tokio::process::Child> = None;
        loop {
            if let Some((lines, writer, pid)) = hello(&socket).await {
                let (out, outgoing) = mpsc::unbounded_channel();
                tokio::spawn(drive(lines, writer, outgoing, on_end, on_lost));
                // A host we started stays our child until we exit: reap it when it ends.
                if let Some(mut child) = started {
                    tokio::spawn(async move { child.wait().await });
                }
                return Ok(Connection { pid, out });
            }
            // None runs, or the one we started gave way to another (it exits at once then).
            let gone = match started.as_mut() {
                None => true,
                Some(child) => child.try_wait().map_or(true, |status| status.is_some()),
            };
            if gone {
                started = Some(self.start_host()?);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the worker host did not answer on {} within {} s (its log: {})",
                    socket.display(),
                    HOST_START_TIMEOUT.as_secs(),
                    self.data_dir.join(HOST_LOG).display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn start_host(&self) -> Result<tokio::process::Child, String> {
        let log_path = self.data_dir.join(HOST_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let errors = log.try_clone().map_err(|e| e.to_string())?;
        // No pre_exec hook: the host is started with posix_spawn (vfork-like), not fork,
        // which would copy the server's page tables. It calls setsid itself.
        Command::new(&self.program)
            .args(&self.args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--nice")
            .arg(self.nice.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(errors))
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the worker host {}: {e}",
                    self.program.display()
                )
            })
    }
}

/// Connects to the socket and reads the host's `hello`.
async fn hello(socket: &Path) -> Option<(Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf, i32)> {
    let stream = UnixStream::connect(socket).await.ok()?;
    let (reader, writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let line = tokio::time::timeout(Duration::from_secs(2), lines.next_line())
        .await
        .ok()?
        .ok()??;
    match serde_json::from_str(&line).ok()? {
        FromHost::Hello { pid } => Some((lines, writer, i32::try_from(pid).ok()?)),
        FromHost::Ended { .. } => None,
    }
}

/// Writes the queued lines and reads the host's, until either side closes.
async fn drive(
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    mut writer: OwnedWriteHalf,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    on_end: EndHook,
    on_lost: LostHook,
) {
    loop {
        tokio::select! {
            // Cancel safe: a line read halfway stays in the reader.
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Ok(FromHost::Ended { task_id }) = serde_json::from_str(&line) {
                        on_end(&task_id);
                    }
                }
                _ => break,
            },
            message = outgoing.recv() => match message {
                Some((bytes, written)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                    let _ = written.send(());
                }
                None => break,
            },
        }
    }
    drop(outgoing);
    on_lost();
}
