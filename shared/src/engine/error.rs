//! The engine's errors: its own (`EngineError`), and the errors a state raises while an
//! execution runs (`StateError`), named as Step Functions names them.

use crate::ports::PortError;

/// A failure of the engine itself, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state machine definition cannot be run.
    #[error("state machine definition: {0}; fix the definition (or its substitutions)")]
    Definition(String),
    /// SQLite refused an operation.
    #[error("execution database: {0}; check the database file is writable and not corrupt")]
    Database(#[from] rusqlite::Error),
    /// Stored data could not be read back.
    #[error("execution database holds unreadable data: {0}; the file may have been edited by hand")]
    Corrupt(String),
    /// No execution has this name.
    #[error("no execution named {0:?}; list executions to see which exist")]
    NotFound(String),
    /// A page token that no page handed out.
    #[error("page token {0:?} was not handed out by this server; start again without it")]
    InvalidToken(String),
}

impl EngineError {
    /// Whether SQLite only was busy, so retrying may help.
    fn is_busy(&self) -> bool {
        matches!(
            self,
            EngineError::Database(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

impl From<EngineError> for PortError {
    fn from(err: EngineError) -> Self {
        if err.is_busy() {
            PortError::Transient(err.to_string())
        } else {
            PortError::Permanent(err.to_string())
        }
    }
}

/// Why a task token was not accepted, named as Step Functions' `SendTask*` errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No wait ever had this token.
    #[error("InvalidToken: no task is waiting for this task token")]
    InvalidToken,
    /// The wait this token opened is over: answered, timed out, or its state was left.
    #[error("TaskTimedOut: the task this token belongs to is no longer waiting")]
    TaskTimedOut,
    /// The engine could not record the answer.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// An error raised by a state during an execution: `States.Runtime`, a task's own error...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateError {
    /// The error name, such as `States.Timeout`.
    pub error: String,
    /// What happened, in words.
    pub cause: String,
}

impl StateError {
    /// An error with this name and cause.
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            cause: cause.into(),
        }
    }

    /// `States.Runtime`: bad input or output processing; cannot be retried or caught.
    pub fn runtime(cause: impl Into<String>) -> Self {
        Self::new(RUNTIME, cause)
    }
}

/// Input or output processing failed; terminal, never retried or caught.
pub const RUNTIME: &str = "States.Runtime";
/// A task ran past its `TimeoutSeconds` (`ErrorEquals: ["States.Timeout"]` also takes
/// [`HEARTBEAT_TIMEOUT`]).
pub const TIMEOUT: &str = "States.Timeout";
/// A task sent no heartbeat within its `HeartbeatSeconds`.
pub const HEARTBEAT_TIMEOUT: &str = "States.HeartbeatTimeout";
/// No Choice rule matched and there is no `Default`.
pub const NO_CHOICE_MATCHED: &str = "States.NoChoiceMatched";
/// `ResultPath` could not be applied to the state input.
pub const RESULT_PATH_MATCH_FAILURE: &str = "States.ResultPathMatchFailure";
/// Matches every error name in `ErrorEquals`.
pub const ALL: &str = "States.ALL";
/// Matches every task error but the timeouts in `ErrorEquals`.
pub const TASK_FAILED: &str = "States.TaskFailed";
