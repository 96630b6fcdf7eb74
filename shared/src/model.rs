//! The wire types of the public contract: the request as clients of the original app send
//! it, the responses, and the callback body.
//!
//! Raw request types accept every field of the original `TaskRunnerRequest`, `WorkerConfig`
//! and `GitConfig`, all nullable. They are turned into a [`crate::task::TaskSpec`] by
//! [`crate::validate`]; nothing else reads them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ports::Outcome;
use crate::secret::Secret;

/// `POST /task-runner`: the original app's `TaskRunnerRequest`, plus optional extensions.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRunnerRequest {
    /// Unique task id, 1-80 characters of `[A-Za-z0-9_-]`.
    #[schemars(extend("pattern" = crate::http::TASK_ID_PATTERN))]
    pub task_id: String,
    /// The `.py` or `.sh` file to run, relative to the tasks directory or the first repository.
    #[schemars(extend("pattern" = r"\.(py|sh)$"))]
    pub task_file_name: String,
    /// Worker size, repositories, environment and secrets.
    pub worker_config: WorkerConfig,
    /// Where the result is POSTed when the task ends.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Bearer token sent with the callback.
    #[serde(default)]
    pub callback_url_token: Option<Secret>,
    /// Terminate the worker when the task ends (default true).
    #[serde(default)]
    pub terminate_on_completion: Option<bool>,
    /// End the task as `timed_out` after this many seconds (default 6 hours).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Tasks with the same key run one at a time, in submit order (e.g. one deploy per
    /// repository); the others wait with status `queued`.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// With `concurrency_key`: cancel the running tasks with that key ("latest wins").
    #[serde(default)]
    pub cancel_in_progress: Option<bool>,
}

/// The original `WorkerConfig`. Fields we cannot honour are refused with 422 when set.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Container image. Not supported by the local worker.
    #[serde(default)]
    pub worker_image: Option<String>,
    /// `X-Small`, `Small`, `Medium`, `Large`, `2X-Large` or `GPU` (case-insensitive).
    #[serde(default)]
    pub worker_size: Option<String>,
    /// `cloud_worker` (the only kind supported) or `workspace`.
    #[serde(default)]
    pub service_type: Option<String>,
    /// Not supported: workers are not reached over the network.
    #[serde(default)]
    pub network_protocol: Option<String>,
    /// Not supported: distributed jobs.
    #[serde(default)]
    pub distributed_config: Option<Value>,
    /// Not supported: custom image builds.
    #[serde(default)]
    pub image_config: Option<Value>,
    /// Shell commands run in the workspace before the task.
    #[serde(default)]
    pub startup_script: Option<String>,
    /// Given to the task as `LOG_LEVEL`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Given to the task as `MODULES_LOG_LEVEL`.
    #[serde(default)]
    pub modules_log_level: Option<String>,
    /// Skip TLS verification when cloning.
    #[serde(default)]
    pub bypass_ssl_verification: Option<bool>,
    /// Not supported: workers are not interactive.
    #[serde(default)]
    pub interactive: Option<bool>,
    /// Not supported.
    #[serde(default)]
    pub service_url: Option<String>,
    /// Owner e-mail, given to the task as `TASKRUNNER_OWNER_EMAIL`.
    #[serde(default)]
    pub email: Option<String>,
    /// Refused: secrets are never accepted in requests.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// Environment variables; string, number or bool values (stringified).
    #[serde(default)]
    pub env_variables: Option<Map<String, Value>>,
    /// Secrets as `NAME` or `NAME:ENV_NAME`.
    #[serde(default)]
    pub personal_secrets: Option<Vec<String>>,
    /// Secrets as `NAME` or `NAME:ENV_NAME`.
    #[serde(default)]
    pub shared_secrets: Option<Vec<String>>,
    /// Repositories cloned before the task runs.
    #[serde(default)]
    pub git_configs: Option<Vec<GitConfig>>,
    /// Base64 of a JSON object whose keys merge into this config (explicit fields win).
    #[serde(default)]
    pub additional_params: Option<String>,
}

/// The original `GitConfig`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// `https://` URL; in the embedded mode also a local path or `file://` URL.
    pub remote_url: String,
    /// Name of the secret holding the token (none for public or local repositories).
    #[serde(default)]
    pub secret_name: Option<String>,
    /// User name sent with the token (default `x-access-token`).
    #[serde(default)]
    pub username: Option<String>,
    /// Refused when true: tokens are never written to the workspace.
    #[serde(default)]
    pub save_secret: Option<bool>,
    /// Directory inside the workspace (default: the repository's name).
    #[serde(default)]
    pub local_path: Option<String>,
    /// Branch or tag to check out.
    #[serde(default)]
    pub branch: Option<String>,
    /// Folders of a sparse checkout.
    #[serde(default)]
    pub sparse_checkout_folders: Option<Vec<String>>,
    /// Shallow clone depth.
    #[serde(default)]
    pub fetch_depth: Option<u32>,
    /// Exact commit to check out after cloning (full 40- or 64-character hex id); the
    /// branch tip when absent. Webhook-started tasks pin the pushed commit with it.
    #[serde(default)]
    pub commit: Option<String>,
}

/// The answer to `POST /task-runner` (the original's `TaskRunnerResponse`, extended).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskRunnerResponse {
    /// True when the task was accepted.
    pub success: bool,
    /// What happened, or what is wrong and how to fix it.
    pub message: String,
    /// The task id, when accepted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task_id: Option<String>,
    /// Where to read the task's status, when accepted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_url: Option<String>,
}

impl TaskRunnerResponse {
    /// A refusal with a message.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            success: false,
            message: message.into(),
            task_id: None,
            status_url: None,
        }
    }
}

/// The body POSTed to `callback_url`: one JSON object (never a string holding JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackBody {
    /// The task file name (the original's `task_name`).
    pub task_name: String,
    /// The task id.
    pub task_id: String,
    /// True only when the task exited 0.
    pub success: bool,
    /// The tail of the task's log, secret values masked.
    pub logs: String,
    /// `succeeded`, `failed`, `timed_out`, `cancelled` or `error`.
    pub status: Outcome,
    /// The task's exit code, when it ran and exited.
    pub exit_code: Option<i32>,
    /// Why, when the task did not simply exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the task started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// `finished_at - started_at` in seconds.
    pub duration_seconds: Option<f64>,
    /// Whether earlier log output was left out.
    pub logs_truncated: bool,
    /// The tasks this task started with its task token, and their statuses at its end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<crate::chain::ChildRef>,
}

/// What the original's sample receiver answers (`TaskRunnerCallbackResponse`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CallbackReceipt {
    /// Always true when the body was readable.
    pub success: bool,
    /// `ok`.
    pub message: String,
}

/// Rewrites every integral float (`30.0`) as an integer, in place: JSON Schema counts `30.0`
/// as an integer, serde's integer fields do not.
pub fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) if number.is_f64() => {
            let Some(float) = number.as_f64() else { return };
            // Only floats that are exactly a whole number within i64's range.
            if float.fract() == 0.0 && float.abs() < 9.0e15 {
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}
