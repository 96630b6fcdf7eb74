//! `LocalTaskTokens`: the embedded mode's [`TaskTokens`]. The newest token of each task is
//! a file `tokens/<task id>` in the data directory (it survives a restart of `serve`), and
//! resuming answers it through the engine (`SendTaskSuccess`/`SendTaskFailure` in process).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use serde_json::Value;

use super::layout::write_atomic;
use crate::engine::{Engine, TokenError};
use crate::ports::{PortError, TaskTokens};

/// How a token is answered.
enum Reply<'a> {
    Success(Value),
    Failure { error: &'a str, cause: &'a str },
}

/// Task tokens in files, answered by the embedded engine.
pub struct LocalTaskTokens {
    dir: PathBuf,
    engine: OnceLock<Weak<Engine>>,
}

impl LocalTaskTokens {
    /// Tokens under `data_dir/tokens`; nothing is answered until [`Self::attach`].
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tokens"),
            engine: OnceLock::new(),
        }
    }

    /// The engine the tokens belong to (built after the steps that keep them).
    pub fn attach(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    fn token(&self, task_id: &str) -> Result<Option<String>, PortError> {
        match std::fs::read_to_string(self.path(task_id)) {
            Ok(token) => Ok(Some(token)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(PortError::Transient(format!(
                "cannot read the task token of {task_id} in {}: {err}",
                self.dir.display()
            ))),
        }
    }

    fn engine(&self) -> Result<Arc<Engine>, PortError> {
        self.engine
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| PortError::Transient("the engine is not running".into()))
    }

    /// Answers the task's kept token with `answer`; false when no wait is open on it. An
    /// answered token's file is removed.
    async fn answer(&self, task_id: &str, reply: Reply<'_>) -> Result<bool, PortError> {
        let Some(token) = self.token(task_id)? else {
            return Ok(false);
        };
        let engine = self.engine()?;
        let answered = match reply {
            Reply::Success(output) => engine.send_task_success(&token, output).await,
            Reply::Failure { error, cause } => engine.send_task_failure(&token, error, cause).await,
        };
        match answered {
            Ok(()) => {
                let _ = std::fs::remove_file(self.path(task_id));
                Ok(true)
            }
            Err(TokenError::InvalidToken | TokenError::TaskTimedOut) => Ok(false),
            Err(TokenError::Engine(err)) => Err(err.into()),
        }
    }
}

#[async_trait]
impl TaskTokens for LocalTaskTokens {
    async fn keep(&self, task_id: &str, token: &str) -> Result<(), PortError> {
        let write = || {
            std::fs::create_dir_all(&self.dir)?;
            write_atomic(&self.path(task_id), token.as_bytes())
        };
        write().map_err(|err| {
            PortError::Transient(format!(
                "cannot keep the task token of {task_id} in {}: {err}",
                self.dir.display()
            ))
        })
    }

    async fn resume(&self, task_id: &str, output: &Value) -> Result<bool, PortError> {
        self.answer(task_id, Reply::Success(output.clone())).await
    }

    async fn fail(&self, task_id: &str, error: &str, cause: &str) -> Result<bool, PortError> {
        self.answer(task_id, Reply::Failure { error, cause }).await
    }
}
