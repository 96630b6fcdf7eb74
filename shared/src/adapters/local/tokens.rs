//! `LocalTaskTokens`: the embedded mode's [`TaskTokens`]. The newest token of each task is
//! kept in the data directory's worker records ([`super::records`]; it survives a restart
//! of `serve`), and resuming answers it through the engine
//! (`SendTaskSuccess`/`SendTaskFailure` in process).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use serde_json::Value;

use super::records::LazyRecords;
use crate::engine::{Engine, TokenError};
use crate::ports::{PortError, TaskTokens};

/// How a token is answered.
enum Reply<'a> {
    Success(Value),
    Failure { error: &'a str, cause: &'a str },
}

/// Task tokens in the worker records, answered by the embedded engine.
pub struct LocalTaskTokens {
    data_dir: PathBuf,
    records: LazyRecords,
    engine: OnceLock<Weak<Engine>>,
}

impl LocalTaskTokens {
    /// Tokens of `data_dir`; nothing is answered until [`Self::attach`].
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            records: LazyRecords::default(),
            engine: OnceLock::new(),
        }
    }

    /// The engine the tokens belong to (built after the steps that keep them).
    pub fn attach(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn engine(&self) -> Result<Arc<Engine>, PortError> {
        self.engine
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| PortError::Transient("the engine is not running".into()))
    }

    /// Answers the task's kept token with `answer`; false when no wait is open on it. An
    /// answered token is forgotten.
    async fn answer(&self, task_id: &str, reply: Reply<'_>) -> Result<bool, PortError> {
        let records = self.records.get(&self.data_dir)?;
        let Some(token) = records.token(task_id).await? else {
            return Ok(false);
        };
        let engine = self.engine()?;
        let answered = match reply {
            Reply::Success(output) => engine.send_task_success(&token, output).await,
            Reply::Failure { error, cause } => engine.send_task_failure(&token, error, cause).await,
        };
        match answered {
            Ok(()) => {
                if let Err(err) = records.forget_token(task_id, &token).await {
                    tracing::warn!(task_id, error = %err, "an answered task token could not be forgotten; answering it again is refused");
                }
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
        self.records
            .get(&self.data_dir)?
            .keep_token(task_id, token)
            .await
    }

    async fn resume(&self, task_id: &str, output: &Value) -> Result<bool, PortError> {
        self.answer(task_id, Reply::Success(output.clone())).await
    }

    async fn fail(&self, task_id: &str, error: &str, cause: &str) -> Result<bool, PortError> {
        self.answer(task_id, Reply::Failure { error, cause }).await
    }
}
