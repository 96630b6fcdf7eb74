//! The StartBuild request for a task: compute type, timeout, idempotency token and the
//! environment the runner buildspec reads. Secret values are never part of it: secrets go
//! as `SECRETS_MANAGER` variables holding the secret's *name*.

use aws_sdk_codebuild::types::{ComputeType, EnvironmentVariable, EnvironmentVariableType};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::CodeBuildConfig;
use crate::ports::PortError;
use crate::task::{TaskId, TaskSpec};

/// The task id, for the runner and for finding a task's build.
pub const TASK_ID_VAR: &str = "TASKRUNNER_TASK_ID";
/// Base64 of the [`TaskSpec`] JSON (secret names only).
pub const SPEC_VAR: &str = "TASKRUNNER_SPEC";
/// Seconds POST_BUILD keeps a finished build alive (`terminate_on_completion: false`).
pub const KEEP_VAR: &str = "TASKRUNNER_KEEP_SECONDS";
/// Prefix of the git token variables: `TASKRUNNER_GIT_TOKEN_<index in spec.git>`.
pub const GIT_TOKEN_PREFIX: &str = "TASKRUNNER_GIT_TOKEN_";

/// The API a task starts children through.
pub const API_URL_VAR: &str = "TASKRUNNER_API_URL";
/// The task's own token, scoped to its children.
pub const TASK_TOKEN_VAR: &str = "TASKRUNNER_TASK_TOKEN";

/// CodeBuild's bounds on `timeoutInMinutesOverride`.
const MIN_TIMEOUT_MINUTES: u64 = 5;
const MAX_TIMEOUT_MINUTES: u64 = 2160;

/// The build timeout for a task timeout: whole minutes, rounded up, within CodeBuild's 5-2160.
pub fn timeout_minutes(timeout_seconds: u64) -> i32 {
    let minutes = timeout_seconds
        .div_ceil(60)
        .clamp(MIN_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES);
    // At most 2160: fits.
    i32::try_from(minutes).unwrap_or(i32::MAX)
}

/// The StartBuild idempotency token of a task: the same for every start of the same task id,
/// so a retried submit within CodeBuild's five-minute window gets the build already started.
pub fn idempotency_token(task_id: &TaskId) -> String {
    let digest = Sha256::digest(format!("taskrunner-start:{task_id}").as_bytes());
    format!("taskrunner-{}", &hex::encode(digest)[..40])
}

/// What StartBuild is called with, computed from a task before any call is made.
pub struct StartPlan {
    pub compute_type: ComputeType,
    pub timeout_minutes: i32,
    pub idempotency_token: String,
    pub env: Vec<EnvironmentVariable>,
}

impl StartPlan {
    /// The plan for `spec`, or a permanent error naming what cannot run on CodeBuild.
    pub fn new(spec: &TaskSpec, config: &CodeBuildConfig) -> Result<Self, PortError> {
        let size = &spec.worker.name;
        let Some((name, worker_size)) = config.sizes.find(size) else {
            return Err(PortError::Permanent(format!(
                "worker size {size:?} is not configured for CodeBuild; known sizes: {}",
                config.sizes.names().join(", ")
            )));
        };
        if name.to_ascii_lowercase().contains("gpu")
            || worker_size.codebuild_compute_type.contains("GPU")
        {
            return Err(PortError::Permanent(format!(
                "worker size {name:?} needs a GPU, which the CodeBuild backend does not offer: \
                 its project runs LINUX_CONTAINER images; choose a CPU size ({})",
                config
                    .sizes
                    .names()
                    .into_iter()
                    .filter(|n| !n.to_ascii_lowercase().contains("gpu"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let keep = if spec.terminate_on_completion {
            0
        } else {
            config.keep_seconds
        };
        // CodeBuild's own limit: the task's timeout plus the keep time, so a build ends even
        // when no function is left to stop it.
        Ok(Self {
            compute_type: ComputeType::from(worker_size.codebuild_compute_type.as_str()),
            timeout_minutes: timeout_minutes(spec.timeout_seconds.saturating_add(keep)),
            idempotency_token: idempotency_token(&spec.task_id),
            env: environment(spec, &config.secret_prefix, keep)?,
        })
    }
}

fn environment(
    spec: &TaskSpec,
    secret_prefix: &str,
    keep_seconds: u64,
) -> Result<Vec<EnvironmentVariable>, PortError> {
    let spec_json = serde_json::to_vec(spec)
        .map_err(|e| PortError::Permanent(format!("cannot encode the task spec: {e}")))?;
    let mut env = vec![
        plain(TASK_ID_VAR, spec.task_id.as_str())?,
        plain(
            SPEC_VAR,
            &base64::engine::general_purpose::STANDARD.encode(spec_json),
        )?,
        plain(KEEP_VAR, &keep_seconds.to_string())?,
    ];
    let optional = [
        ("LOG_LEVEL", &spec.log_level),
        ("MODULES_LOG_LEVEL", &spec.modules_log_level),
        ("TASKRUNNER_OWNER_EMAIL", &spec.email),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            env.push(plain(name, value)?);
        }
    }
    for (name, value) in &spec.env {
        check_name(name, "env_variables")?;
        env.push(plain(name, value)?);
    }
    for secret in &spec.secrets {
        check_name(&secret.env, "secret environment variable")?;
        env.push(from_secrets_manager(
            &secret.env,
            secret_prefix,
            &secret.secret,
        )?);
    }
    for (index, git) in spec.git.iter().enumerate() {
        if let Some(secret) = &git.secret_name {
            env.push(from_secrets_manager(
                &format!("{GIT_TOKEN_PREFIX}{index}"),
                secret_prefix,
                secret,
            )?);
        }
    }
    Ok(env)
}

/// The variables of a task that may start children: the API's URL, and the task token as
/// a `SECRETS_MANAGER` reference to `token_secret` (never the value: CodeBuild reads it at
/// build start and masks it in the log).
pub fn chain_environment(
    api_url: &str,
    secret_prefix: &str,
    token_secret: &str,
) -> Result<Vec<EnvironmentVariable>, PortError> {
    Ok(vec![
        plain(API_URL_VAR, api_url)?,
        from_secrets_manager(TASK_TOKEN_VAR, secret_prefix, token_secret)?,
    ])
}

/// Refuses names CodeBuild reserves and the ones the runner itself sets.
fn check_name(name: &str, what: &str) -> Result<(), PortError> {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CODEBUILD_") {
        return Err(PortError::Permanent(format!(
            "{what} {name:?}: names starting with CODEBUILD_ are reserved by AWS CodeBuild; \
             rename the variable"
        )));
    }
    if upper == TASK_ID_VAR
        || upper == SPEC_VAR
        || upper == KEEP_VAR
        || upper.starts_with(GIT_TOKEN_PREFIX)
    {
        return Err(PortError::Permanent(format!(
            "{what} {name:?}: this name is set by taskrunner itself; rename the variable"
        )));
    }
    Ok(())
}

fn plain(name: &str, value: &str) -> Result<EnvironmentVariable, PortError> {
    variable(name, value, EnvironmentVariableType::Plaintext)
}

/// A variable CodeBuild fills from Secrets Manager. Its value is the secret's name; a `:`
/// would be read as `name:json-key:version-stage:version-id`, so it is refused.
fn from_secrets_manager(
    name: &str,
    prefix: &str,
    secret: &str,
) -> Result<EnvironmentVariable, PortError> {
    if secret.contains(':') {
        return Err(PortError::Permanent(format!(
            "secret name {secret:?} contains ':', which CodeBuild reads as a JSON-key or version \
             separator; rename the secret"
        )));
    }
    variable(
        name,
        &format!("{prefix}{secret}"),
        EnvironmentVariableType::SecretsManager,
    )
}

fn variable(
    name: &str,
    value: &str,
    kind: EnvironmentVariableType,
) -> Result<EnvironmentVariable, PortError> {
    EnvironmentVariable::builder()
        .name(name)
        .value(value)
        .r#type(kind)
        .build()
        .map_err(|e| PortError::Permanent(format!("environment variable {name:?}: {e}")))
}
