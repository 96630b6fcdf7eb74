//! The validated task: what the rest of the system relies on once a request has been parsed.
//!
//! Values here are produced by [`crate::validate`] only; they travel through the state
//! machine as execution input, so they hold secret *names*, never secret values.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A task id: 1-80 characters of `[A-Za-z0-9_-]` (it is also the execution name). A child
/// task's id is its parent's id, a `.`, and the child's own id (`deploy-1.train`), so ids
/// never collide across parents and the id alone names the task's ancestry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

/// Separates a child's own id from its parent's id.
pub const CHILD_SEPARATOR: char = '.';

impl TaskId {
    /// Parses a task id (a child's dotted id too), or says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 80 {
            return Err(format!(
                "must be 1 to 80 characters long (got {}); it becomes the execution name",
                raw.len()
            ));
        }
        if let Some(bad) = raw.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == CHILD_SEPARATOR)
        }) {
            return Err(format!(
                "{bad:?} is not allowed; use only letters, digits, '-' and '_'"
            ));
        }
        if raw.split(CHILD_SEPARATOR).any(str::is_empty) {
            return Err(
                "'.' only separates a child's id from its parent's (PARENT.CHILD); it cannot start, end or repeat".into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses the id a request gives its own task: no `.`, which the server adds itself
    /// between a parent's id and its child's.
    pub fn parse_own(raw: &str) -> Result<Self, String> {
        if raw.contains(CHILD_SEPARATOR) {
            return Err(
                "'.' is not allowed; use only letters, digits, '-' and '_' ('.' joins a child's id to its parent's, and the server adds it)".into(),
            );
        }
        Self::parse(raw)
    }

    /// The id of this task's child whose own id is `own`.
    pub fn child(&self, own: &TaskId) -> Result<Self, String> {
        let id = format!("{}{CHILD_SEPARATOR}{}", self.0, own.0);
        if id.len() > 80 {
            return Err(format!(
                "the child's id {id:?} would be {} characters long, over the limit of 80 (parent id, '.', child id); use a shorter task_id",
                id.len()
            ));
        }
        Ok(Self(id))
    }

    /// The parent's id, for a child task.
    pub fn parent(&self) -> Option<TaskId> {
        self.0
            .rsplit_once(CHILD_SEPARATOR)
            .map(|(parent, _)| Self(parent.to_owned()))
    }

    /// How many ancestors the task has: 0 for a task submitted with an API key.
    pub fn depth(&self) -> usize {
        self.0.matches(CHILD_SEPARATOR).count()
    }

    /// Whether `other` is a child, grandchild, ... of this task.
    pub fn is_ancestor_of(&self, other: &str) -> bool {
        other
            .strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.starts_with(CHILD_SEPARATOR))
    }

    /// The id prefix every descendant's id starts with (`PARENT.`).
    pub fn descendant_prefix(&self) -> String {
        format!("{}{CHILD_SEPARATOR}", self.0)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TaskId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TaskId> for String {
    fn from(value: TaskId) -> Self {
        value.0
    }
}

/// The task file: a relative path ending in `.py` or `.sh`, with no `..` component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskFile(String);

/// How a task file is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpreter {
    /// `python3 FILE`
    Python,
    /// `bash FILE`
    Bash,
}

impl TaskFile {
    /// Parses a task file name, or says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty; name a .py or .sh file".into());
        }
        if raw.starts_with('/') || raw.starts_with('\\') || raw.contains(':') {
            return Err("must be a relative path inside the tasks directory or the repository, not an absolute path".into());
        }
        if raw.split(['/', '\\']).any(|part| part == "..") {
            return Err("must be a relative path inside the tasks directory or the repository; '..' is not allowed".into());
        }
        if raw.contains('\0') {
            return Err("must not contain a NUL character".into());
        }
        if !(raw.ends_with(".py") || raw.ends_with(".sh")) {
            return Err("must end with .py or .sh".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The relative path as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which interpreter runs this file.
    pub fn interpreter(&self) -> Interpreter {
        if self.0.ends_with(".py") {
            Interpreter::Python
        } else {
            Interpreter::Bash
        }
    }
}

impl fmt::Display for TaskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TaskFile {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TaskFile> for String {
    fn from(value: TaskFile) -> Self {
        value.0
    }
}

/// A secret the task asked for, and the environment variable it arrives in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    /// Name in the secret store.
    pub secret: String,
    /// Environment variable of the task that receives the value.
    pub env: String,
}

/// A repository to clone into the task's workspace before the task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// `https://...` URL, or (embedded mode) an absolute `file://` URL.
    pub remote_url: String,
    /// Name of the secret holding the token, if the repository needs one.
    pub secret_name: Option<String>,
    /// User name given to git with the token.
    pub username: String,
    /// Directory inside the workspace (relative).
    pub local_path: String,
    /// Branch or tag to check out; the remote's default when absent.
    pub branch: Option<String>,
    /// Exact commit to check out after cloning, when known (webhook pushes).
    #[serde(default)]
    pub commit: Option<String>,
    /// Folders for a sparse checkout; everything when empty.
    pub sparse_checkout_folders: Vec<String>,
    /// Shallow clone depth; full history when absent.
    pub fetch_depth: Option<u32>,
}

/// Resources of a worker size, as the local worker applies them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerResources {
    /// Canonical size name (`X-Small`, `Small`, ...).
    pub name: String,
    /// CPU cores the task may use.
    pub cpus: u32,
    /// Memory limit in MiB.
    pub memory_mib: u64,
}

/// A validated task, ready to run. Holds secret names only, and nothing that changes
/// between two submissions of the same request, so it can serve as the execution input
/// that makes starting idempotent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task id.
    pub task_id: TaskId,
    /// The task file to run.
    pub task_file: TaskFile,
    /// The worker size and its resources.
    pub worker: WorkerResources,
    /// Environment variables for the task (values stringified).
    pub env: BTreeMap<String, String>,
    /// Secrets the task receives as environment variables.
    pub secrets: Vec<SecretEnv>,
    /// Repositories to clone, in order; the first one is searched for the task file.
    pub git: Vec<GitSource>,
    /// Shell commands run before the task, in the workspace.
    pub startup_script: Option<String>,
    /// `log_level` of the original, handed to the task as `LOG_LEVEL`.
    pub log_level: Option<String>,
    /// `modules_log_level` of the original, handed to the task as `MODULES_LOG_LEVEL`.
    pub modules_log_level: Option<String>,
    /// Skip TLS verification when cloning.
    pub bypass_ssl_verification: bool,
    /// Where the result is POSTed.
    pub callback_url: Option<String>,
    /// Whether a callback bearer token was stored for this task.
    pub has_callback_token: bool,
    /// Terminate the worker (and remove its workspace) when the task ends.
    pub terminate_on_completion: bool,
    /// The task is ended as `timed_out` after this many seconds.
    pub timeout_seconds: u64,
    /// Owner e-mail given by the client, handed to the task as `TASKRUNNER_OWNER_EMAIL`.
    pub email: Option<String>,
    /// Tasks with the same key run one at a time (per-key limit), in submit order.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// "Latest wins": cancel the running tasks with the same key when this one is submitted.
    #[serde(default)]
    pub cancel_in_progress: bool,
    /// The task that submitted this one with its task token, for a child task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<TaskId>,
}

/// Default task timeout: six hours.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 6 * 3600;

impl TaskSpec {
    /// A task that runs `task_file` on `worker` with nothing else: no repositories, secrets,
    /// environment or callback; terminated on completion; the default timeout.
    pub fn new(task_id: TaskId, task_file: TaskFile, worker: WorkerResources) -> Self {
        Self {
            task_id,
            task_file,
            worker,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            git: Vec::new(),
            startup_script: None,
            log_level: None,
            modules_log_level: None,
            bypass_ssl_verification: false,
            callback_url: None,
            has_callback_token: false,
            terminate_on_completion: true,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            email: None,
            concurrency_key: None,
            cancel_in_progress: false,
            parent_task_id: None,
        }
    }
}

/// Name of the secret-store entry holding a task's callback bearer token.
pub fn callback_token_secret_name(task_id: &TaskId) -> String {
    format!("{CALLBACK_TOKEN_PREFIX}{task_id}")
}

/// Name of the secret-store entry a worker backend that cannot pipe values (CodeBuild)
/// keeps a task's task token under while the task runs; deleted when the task finishes.
pub fn task_token_secret_name(task_id: &TaskId) -> String {
    format!("{TASK_TOKEN_PREFIX}{task_id}")
}

/// Prefix of the per-task task token entries in the secret store.
pub const TASK_TOKEN_PREFIX: &str = "taskrunner-task-tokens/";

/// Prefix of the per-task callback token entries in the secret store.
pub const CALLBACK_TOKEN_PREFIX: &str = "taskrunner-callback-token/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_follow_execution_name_rules() {
        assert!(TaskId::parse("model-deployment-task-1").is_ok());
        assert!(TaskId::parse("a_B-9").is_ok());
        assert!(TaskId::parse("").unwrap_err().contains("1 to 80"));
        assert!(
            TaskId::parse(&"x".repeat(81))
                .unwrap_err()
                .contains("1 to 80")
        );
        assert!(TaskId::parse("a b").unwrap_err().contains("' '"));
        assert!(TaskId::parse("a/b").is_err());
        assert!(TaskId::parse("a..b").is_err());
        assert!(TaskId::parse_own("a.b").unwrap_err().contains("'.'"));
    }

    #[test]
    fn child_ids_extend_their_parent_s() {
        let parent = TaskId::parse("deploy-1").unwrap();
        let child = parent.child(&TaskId::parse("train").unwrap()).unwrap();
        assert_eq!(child.as_str(), "deploy-1.train");
        assert_eq!(child.parent(), Some(parent.clone()));
        assert_eq!((parent.depth(), child.depth()), (0, 1));
        assert!(parent.is_ancestor_of("deploy-1.train.eval"));
        assert!(!parent.is_ancestor_of("deploy-10.train"));
        assert!(!parent.is_ancestor_of("deploy-1"));
        let long = TaskId::parse(&"x".repeat(75)).unwrap();
        assert!(
            long.child(&parent)
                .unwrap_err()
                .contains("over the limit of 80")
        );
    }

    #[test]
    fn task_files_stay_inside_their_directory() {
        assert_eq!(
            TaskFile::parse("deployer_task.py").unwrap().interpreter(),
            Interpreter::Python
        );
        assert_eq!(
            TaskFile::parse("jobs/run.sh").unwrap().interpreter(),
            Interpreter::Bash
        );
        assert!(TaskFile::parse("../x.py").unwrap_err().contains("'..'"));
        assert!(TaskFile::parse("a/../../x.py").is_err());
        assert!(
            TaskFile::parse("/etc/x.py")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(TaskFile::parse("x.rb").unwrap_err().contains(".py or .sh"));
    }
}
