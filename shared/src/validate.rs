//! Turns a raw request body into a [`TaskSpec`], or into an error that names the field, the
//! problem and the fix. Nothing is started for a request that fails here.
//!
//! Accepted as clients of the original app send it: a JSON object, or a JSON string holding
//! the object; `worker_config.additional_params` (base64 of a JSON object) merged into the
//! config, explicit non-null fields winning.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::model::{GitConfig, TaskRunnerRequest, WorkerConfig, integral_floats_as_integers};
use crate::secret::Secret;
use crate::task::{GitSource, SecretEnv, TaskFile, TaskId, TaskSpec};

/// A refused request: HTTP status (400 or 422) and the message for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// 400 for a body that is not JSON, 422 for JSON that is not a valid request.
    pub status: u16,
    /// What is wrong and how to fix it, naming the field.
    pub message: String,
}

impl RequestError {
    fn bad_json(message: String) -> Self {
        Self {
            status: 400,
            message,
        }
    }

    fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            status: 422,
            message: format!("{field}: {problem}"),
        }
    }
}

/// What validation needs to know about the deployment.
pub struct Rules<'a> {
    /// Worker sizes, timeouts and defaults.
    pub config: &'a Config,
    /// Whether local paths and `file://` URLs are accepted for repositories (embedded mode).
    pub allow_local_repositories: bool,
    /// Directory that relative repository paths are resolved against.
    pub base_dir: &'a Path,
    /// Checks a callback URL (scheme, address classes); returns why it is refused.
    pub check_callback_url: &'a dyn Fn(&str) -> Result<(), String>,
    /// Whether `concurrency_key` can be honoured (the deployment has a task queue).
    pub concurrency_keys: bool,
}

/// A validated request: the spec, the callback token to store, and the request's digest.
#[derive(Debug)]
pub struct Accepted {
    /// The task to run.
    pub spec: TaskSpec,
    /// The callback bearer token, kept out of the spec.
    pub callback_token: Option<Secret>,
}

impl Accepted {
    /// SHA-256 of the spec: equal for equal requests, however they were encoded.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(&self.spec).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

/// Parses and validates a request body.
pub fn parse_request(body: &[u8], rules: &Rules<'_>) -> Result<Accepted, RequestError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|err| {
        RequestError::bad_json(format!(
            "request body is not valid JSON ({err}); send a JSON object with task_id, task_file_name and worker_config"
        ))
    })?;
    // Python clients of the original often send json.dumps(payload) as the JSON body.
    if let Value::String(inner) = &value {
        value = serde_json::from_str(inner).map_err(|err| {
            RequestError::bad_json(format!(
                "request body is a JSON string, and its content is not valid JSON ({err}); send a JSON object"
            ))
        })?;
    }
    let Value::Object(mut object) = value else {
        return Err(RequestError::field(
            "request body",
            "must be a JSON object with task_id, task_file_name and worker_config",
        ));
    };
    if let Some(Value::Object(worker_config)) = object.get_mut("worker_config") {
        merge_additional_params(worker_config)?;
    }
    objects_only(&object)?;
    // The integer fields (not env values, which are stringified as given).
    if let Some(timeout) = object.get_mut("timeout_seconds") {
        integral_floats_as_integers(timeout);
    }
    let repos = object
        .get_mut("worker_config")
        .and_then(|config| config.get_mut("git_configs"))
        .and_then(Value::as_array_mut);
    for repo in repos.into_iter().flatten() {
        if let Some(depth) = repo.get_mut("fetch_depth") {
            integral_floats_as_integers(depth);
        }
    }
    let request: TaskRunnerRequest = serde_path_to_error::deserialize(Value::Object(object))
        .map_err(|err| {
            let path = err.path().to_string();
            let field = if path == "." {
                "request body".to_owned()
            } else {
                path
            };
            RequestError::field(&field, err.into_inner())
        })?;
    validate(request, rules)
}

/// serde reads a struct from an array of its fields in order too; the contract says objects.
fn objects_only(request: &Map<String, Value>) -> Result<(), RequestError> {
    let must_be_object = |field: &str| RequestError::field(field, "must be a JSON object");
    match request.get("worker_config") {
        Some(Value::Object(config)) => {
            if let Some(Value::Array(repos)) = config.get("git_configs") {
                if let Some(i) = repos.iter().position(|repo| !repo.is_object()) {
                    return Err(must_be_object(&format!("worker_config.git_configs[{i}]")));
                }
            }
            Ok(())
        }
        Some(Value::Array(_)) => Err(must_be_object("worker_config")),
        _ => Ok(()),
    }
}

/// Keys of `additional_params` and the config field each one fills.
const ADDITIONAL_PARAMS: &[(&str, &str)] = &[
    ("distributed_conf_dict", "distributed_config"),
    ("image_conf_dict", "image_config"),
    ("git_configs", "git_configs"),
    ("startup_script_b64", "startup_script"),
    ("PRT_LOG_LEVEL", "log_level"),
    ("PRT_MODULES_LOG_LEVEL", "modules_log_level"),
    ("bypass_ssl_verification", "bypass_ssl_verification"),
    ("PRT_INTERACTIVE", "interactive"),
    ("env_variables", "env_variables"),
    ("personal_secrets", "personal_secrets"),
    ("shared_secrets", "shared_secrets"),
    ("image_pull_policy", "image_config"),
];

fn merge_additional_params(config: &mut Map<String, Value>) -> Result<(), RequestError> {
    const FIELD: &str = "worker_config.additional_params";
    let encoded = match config.get("additional_params") {
        Some(Value::String(encoded)) if !encoded.trim().is_empty() => encoded.trim().to_owned(),
        _ => return Ok(()),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&encoded)
        .map_err(|err| {
            RequestError::field(
                FIELD,
                format!(
                    "is not valid base64 ({err}); send base64 of a JSON object, or leave it out"
                ),
            )
        })?;
    let params: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|err| {
        RequestError::field(FIELD, format!("does not decode to a JSON object ({err})"))
    })?;
    for (key, value) in params {
        let Some((_, field)) = ADDITIONAL_PARAMS.iter().find(|(name, _)| *name == key) else {
            let known: Vec<&str> = ADDITIONAL_PARAMS.iter().map(|(name, _)| *name).collect();
            return Err(RequestError::field(
                &format!("{FIELD}.{key}"),
                format!("unknown key; known keys: {}", known.join(", ")),
            ));
        };
        let value = match key.as_str() {
            "startup_script_b64" => decode_startup_script(&value)?,
            "image_pull_policy" => serde_json::json!({ "pull_policy": value }),
            _ => value,
        };
        if value.is_null() {
            continue;
        }
        let explicit = config
            .get(*field)
            .is_some_and(|existing| !existing.is_null());
        if !explicit {
            config.insert((*field).to_owned(), value);
        }
    }
    Ok(())
}

fn decode_startup_script(value: &Value) -> Result<Value, RequestError> {
    const FIELD: &str = "worker_config.additional_params.startup_script_b64";
    let Value::String(encoded) = value else {
        return Err(RequestError::field(FIELD, "must be a base64 string"));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| RequestError::field(FIELD, format!("is not valid base64 ({err})")))?;
    let script = String::from_utf8(bytes)
        .map_err(|_| RequestError::field(FIELD, "does not decode to UTF-8 text"))?;
    Ok(Value::String(script))
}

fn validate(request: TaskRunnerRequest, rules: &Rules<'_>) -> Result<Accepted, RequestError> {
    let config = rules.config;
    let task_id =
        TaskId::parse_own(&request.task_id).map_err(|why| RequestError::field("task_id", why))?;
    let task_file = TaskFile::parse(&request.task_file_name).map_err(|why| {
        RequestError::field(
            "task_file_name",
            format!("{:?} {why}", request.task_file_name),
        )
    })?;
    let worker_config = request.worker_config;
    refuse_unsupported(&worker_config)?;

    let size_name = worker_config
        .worker_size
        .as_deref()
        .unwrap_or(&config.default_worker_size);
    let known = config.worker_sizes.names().join(", ");
    let Some((size_name, size)) = config.worker_sizes.find(size_name) else {
        return Err(RequestError::field(
            "worker_config.worker_size",
            format!("{size_name:?} is not a known size; use one of: {known}"),
        ));
    };
    if rules.allow_local_repositories && !size.local {
        return Err(RequestError::field(
            "worker_config.worker_size",
            format!(
                "{size_name:?} is not available on the local worker (it needs hardware this machine does not provide); use one of: {}",
                config
                    .worker_sizes
                    .0
                    .iter()
                    .filter(|(_, size)| size.local)
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let worker = config
        .worker_sizes
        .resources(size_name)
        .ok_or_else(|| RequestError::field("worker_config.worker_size", "unknown size"))?;

    let env = env_variables(worker_config.env_variables.unwrap_or_default())?;
    let mut secrets = Vec::new();
    secret_refs(
        "worker_config.personal_secrets",
        worker_config.personal_secrets.unwrap_or_default(),
        &mut secrets,
    )?;
    secret_refs(
        "worker_config.shared_secrets",
        worker_config.shared_secrets.unwrap_or_default(),
        &mut secrets,
    )?;
    let mut taken: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    for secret in &secrets {
        if !taken.insert(&secret.env) {
            return Err(RequestError::field(
                "worker_config.personal_secrets",
                format!(
                    "environment variable {} is set twice (by env_variables or another secret); map one of them to another name with NAME:ENV_NAME",
                    secret.env
                ),
            ));
        }
    }

    let mut git = Vec::new();
    for (index, raw) in worker_config
        .git_configs
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        git.push(git_source(
            &format!("worker_config.git_configs[{index}]"),
            raw,
            rules,
        )?);
    }
    let mut paths = BTreeSet::new();
    for (index, source) in git.iter().enumerate() {
        if !paths.insert(source.local_path.as_str()) {
            return Err(RequestError::field(
                &format!("worker_config.git_configs[{index}].local_path"),
                format!(
                    "{:?} is used by another repository; give each one its own local_path",
                    source.local_path
                ),
            ));
        }
    }

    let log_level = worker_config
        .log_level
        .map(|level| log_level("worker_config.log_level", &level))
        .transpose()?;
    let startup_script = worker_config
        .startup_script
        .filter(|script| !script.trim().is_empty());

    let callback_url = match request.callback_url.filter(|url| !url.trim().is_empty()) {
        Some(url) => {
            (rules.check_callback_url)(url.trim())
                .map_err(|why| RequestError::field("callback_url", why))?;
            Some(url.trim().to_owned())
        }
        None => None,
    };
    let callback_token = request
        .callback_url_token
        .filter(|token| !token.expose().is_empty());
    if callback_token.is_some() && callback_url.is_none() {
        return Err(RequestError::field(
            "callback_url_token",
            "is set but callback_url is not; give the callback_url the token is for, or leave the token out",
        ));
    }

    let timeout_seconds = request
        .timeout_seconds
        .unwrap_or(config.default_timeout_seconds);
    if timeout_seconds == 0 || timeout_seconds > config.max_timeout_seconds {
        return Err(RequestError::field(
            "timeout_seconds",
            format!(
                "{timeout_seconds} is out of range; use 1 to {} seconds",
                config.max_timeout_seconds
            ),
        ));
    }

    let concurrency_key = request
        .concurrency_key
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty());
    if let Some(key) = &concurrency_key {
        if !rules.concurrency_keys {
            return Err(RequestError::field(
                "concurrency_key",
                "this deployment has no task queue (on AWS the limit is the CodeBuild project's concurrent build limit); remove concurrency_key",
            ));
        }
        if key.len() > 128
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./:@".contains(c))
        {
            return Err(RequestError::field(
                "concurrency_key",
                format!("{key:?}: use 1 to 128 letters, digits and _-./:@"),
            ));
        }
    }
    let cancel_in_progress = request.cancel_in_progress.unwrap_or(false);
    if cancel_in_progress && concurrency_key.is_none() {
        return Err(RequestError::field(
            "cancel_in_progress",
            "needs a concurrency_key naming the tasks it may cancel",
        ));
    }

    let spec = TaskSpec {
        task_id,
        task_file,
        worker,
        env,
        secrets,
        git,
        startup_script,
        log_level,
        modules_log_level: worker_config
            .modules_log_level
            .filter(|level| !level.is_empty()),
        bypass_ssl_verification: worker_config.bypass_ssl_verification.unwrap_or(false),
        has_callback_token: callback_token.is_some(),
        callback_url,
        terminate_on_completion: request.terminate_on_completion.unwrap_or(true),
        timeout_seconds,
        email: worker_config.email.filter(|email| !email.is_empty()),
        concurrency_key,
        cancel_in_progress,
        parent_task_id: None,
    };
    Ok(Accepted {
        spec,
        callback_token,
    })
}

/// Fields of the original `WorkerConfig` that have no meaning here: refused when set.
fn refuse_unsupported(config: &WorkerConfig) -> Result<(), RequestError> {
    let refuse =
        |field: &str, why: &str| Err(RequestError::field(&format!("worker_config.{field}"), why));
    if config
        .worker_image
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return refuse(
            "worker_image",
            "custom images are not supported: tasks run on the deployment's worker image; remove worker_image and install what the task needs in startup_script",
        );
    }
    if let Some(kind) = config.service_type.as_deref().filter(|v| !v.is_empty()) {
        if kind != "cloud_worker" {
            return refuse(
                "service_type",
                "only \"cloud_worker\" is supported; remove service_type or set it to \"cloud_worker\"",
            );
        }
    }
    if config
        .network_protocol
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return refuse(
            "network_protocol",
            "is not supported: workers are never reached over the network; remove network_protocol",
        );
    }
    if config
        .distributed_config
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return refuse(
            "distributed_config",
            "distributed jobs are not supported; run a single-worker task and remove distributed_config",
        );
    }
    if config.image_config.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse(
            "image_config",
            "image builds and registry settings are not supported; remove image_config",
        );
    }
    if config.interactive == Some(true) {
        return refuse(
            "interactive",
            "interactive workers are not supported; remove interactive or set it to false",
        );
    }
    if config.service_url.as_deref().is_some_and(|v| !v.is_empty()) {
        return refuse("service_url", "is not supported; remove service_url");
    }
    if config.refresh_token.is_some() {
        return refuse(
            "refresh_token",
            "secrets are never accepted in requests; store it with `taskrunner secret set NAME` and list NAME in personal_secrets",
        );
    }
    Ok(())
}

fn env_variables(raw: Map<String, Value>) -> Result<BTreeMap<String, String>, RequestError> {
    let mut env = BTreeMap::new();
    for (name, value) in raw {
        let field = format!("worker_config.env_variables.{name}");
        if !is_env_name(&name) {
            return Err(RequestError::field(
                &field,
                "is not a valid environment variable name; use letters, digits and '_', not starting with a digit",
            ));
        }
        if name.starts_with("TASKRUNNER_") {
            return Err(RequestError::field(
                &field,
                "names starting with TASKRUNNER_ are reserved for the values taskrunner sets; rename it",
            ));
        }
        let text = match value {
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => if flag { "True" } else { "False" }.to_owned(),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                return Err(RequestError::field(
                    &field,
                    "must be a string, number or bool; encode lists and objects as a JSON string",
                ));
            }
        };
        if text.contains('\0') {
            return Err(RequestError::field(
                &field,
                "must not contain a NUL character",
            ));
        }
        env.insert(name, text);
    }
    Ok(env)
}

fn secret_refs(
    field: &str,
    raw: Vec<String>,
    out: &mut Vec<SecretEnv>,
) -> Result<(), RequestError> {
    for (index, item) in raw.into_iter().enumerate() {
        let field = format!("{field}[{index}]");
        let (name, env) = match item.split_once(':') {
            Some((name, env)) => (name.trim(), env.trim()),
            None => (item.trim(), item.trim()),
        };
        check_secret_name(&field, name)?;
        if !is_env_name(env) {
            return Err(RequestError::field(
                &field,
                format!(
                    "{env:?} is not a valid environment variable name; write the entry as \"{name}:ENV_NAME\" with ENV_NAME made of letters, digits and '_'"
                ),
            ));
        }
        if out
            .iter()
            .any(|existing| existing.secret == name && existing.env == env)
        {
            continue;
        }
        out.push(SecretEnv {
            secret: name.to_owned(),
            env: env.to_owned(),
        });
    }
    Ok(())
}

/// Secret names: what both the local store and AWS Secrets Manager accept, minus our prefix.
pub fn check_secret_name(field: &str, name: &str) -> Result<(), RequestError> {
    if name.is_empty() || name.len() > 256 {
        return Err(RequestError::field(
            field,
            "secret name must be 1 to 256 characters long",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-./+=@".contains(*c)))
    {
        return Err(RequestError::field(
            field,
            format!("secret name {name:?} contains {bad:?}; use letters, digits and _-./+=@"),
        ));
    }
    if name.starts_with("taskrunner-") {
        return Err(RequestError::field(
            field,
            format!(
                "secret name {name:?} is reserved (names starting with taskrunner- hold taskrunner's own secrets); rename it"
            ),
        ));
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn log_level(field: &str, level: &str) -> Result<String, RequestError> {
    let upper = level.trim().to_ascii_uppercase();
    match upper.as_str() {
        "DEBUG" | "INFO" | "WARNING" | "ERROR" | "CRITICAL" => Ok(upper),
        "WARN" => Ok("WARNING".into()),
        _ => Err(RequestError::field(
            field,
            format!("{level:?} is not a log level; use DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        )),
    }
}

fn git_source(field: &str, raw: GitConfig, rules: &Rules<'_>) -> Result<GitSource, RequestError> {
    let remote_url = remote_url(&format!("{field}.remote_url"), raw.remote_url.trim(), rules)?;
    let secret_name = raw.secret_name.filter(|name| !name.trim().is_empty());
    if let Some(name) = &secret_name {
        check_secret_name(&format!("{field}.secret_name"), name)?;
    }
    if raw.save_secret == Some(true) {
        return Err(RequestError::field(
            &format!("{field}.save_secret"),
            "tokens are never written to the workspace; remove save_secret or set it to false (the token is handed to git for the clone only)",
        ));
    }
    let local_path = match raw.local_path.filter(|path| !path.trim().is_empty()) {
        Some(path) => relative_path(
            &format!("{field}.local_path"),
            path.trim().trim_start_matches("~/"),
        )?,
        None => repository_name(&remote_url),
    };
    let branch = raw.branch.filter(|branch| !branch.is_empty());
    if let Some(branch) = &branch {
        if branch.starts_with('-') || branch.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RequestError::field(
                &format!("{field}.branch"),
                format!("{branch:?} is not a valid branch or tag name"),
            ));
        }
    }
    let mut sparse_checkout_folders = Vec::new();
    for (index, folder) in raw
        .sparse_checkout_folders
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let folder_field = format!("{field}.sparse_checkout_folders[{index}]");
        let folder = relative_path(&folder_field, folder.trim().trim_end_matches('/'))?;
        if folder.starts_with('-') {
            return Err(RequestError::field(
                &folder_field,
                "must not start with '-'",
            ));
        }
        sparse_checkout_folders.push(folder);
    }
    let commit = raw
        .commit
        .map(|commit| commit.trim().to_ascii_lowercase())
        .filter(|commit| !commit.is_empty());
    if let Some(commit) = &commit {
        let hex = commit.chars().all(|c| c.is_ascii_hexdigit());
        if !(hex && (commit.len() == 40 || commit.len() == 64)) {
            return Err(RequestError::field(
                &format!("{field}.commit"),
                format!(
                    "{commit:?} is not a full commit id; give the 40-character (SHA-1) or 64-character (SHA-256) hex id, or leave commit out for the branch tip"
                ),
            ));
        }
    }
    if raw.fetch_depth == Some(0) {
        return Err(RequestError::field(
            &format!("{field}.fetch_depth"),
            "must be at least 1; leave it out for the full history",
        ));
    }
    Ok(GitSource {
        remote_url,
        secret_name,
        username: raw
            .username
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "x-access-token".into()),
        local_path,
        branch,
        commit,
        sparse_checkout_folders,
        fetch_depth: raw.fetch_depth,
    })
}

fn relative_path(field: &str, path: &str) -> Result<String, RequestError> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(RequestError::field(
            field,
            format!("{path:?} must be a relative path inside the workspace, without '..'"),
        ));
    }
    Ok(path.to_owned())
}

fn repository_name(remote_url: &str) -> String {
    let name = remote_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git");
    if name.is_empty() || name == "." || name == ".." {
        "repo".into()
    } else {
        name.to_owned()
    }
}

fn remote_url(field: &str, raw: &str, rules: &Rules<'_>) -> Result<String, RequestError> {
    if raw.is_empty() {
        return Err(RequestError::field(field, "must not be empty"));
    }
    let local_hint = if rules.allow_local_repositories {
        "an https:// URL, a file:// URL or a local path"
    } else {
        "an https:// URL"
    };
    if raw.starts_with("git@") || raw.starts_with("ssh://") {
        return Err(RequestError::field(
            field,
            format!(
                "{raw:?}: SSH remotes are not supported; use {local_hint} and put the token's secret name in secret_name"
            ),
        ));
    }
    if let Some(rest) = raw.strip_prefix("file://") {
        if !rules.allow_local_repositories {
            return Err(RequestError::field(
                field,
                format!("{raw:?}: file:// URLs work only in the embedded mode; use {local_hint}"),
            ));
        }
        if !rest.starts_with('/') {
            return Err(RequestError::field(
                field,
                format!("{raw:?}: a file:// URL needs an absolute path (file:///path/to/repo)"),
            ));
        }
        return Ok(raw.to_owned());
    }
    if !raw.contains("://") {
        if !rules.allow_local_repositories {
            return Err(RequestError::field(
                field,
                format!("{raw:?} is not a URL; use {local_hint}"),
            ));
        }
        let path = rules.base_dir.join(raw);
        let path = path.canonicalize().map_err(|err| {
            RequestError::field(
                field,
                format!(
                    "{raw:?}: local repository {} cannot be read ({err})",
                    path.display()
                ),
            )
        })?;
        return Ok(format!("file://{}", path.display()));
    }
    let url = url::Url::parse(raw)
        .map_err(|err| RequestError::field(field, format!("{raw:?} is not a valid URL ({err})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RequestError::field(
            field,
            "must not contain credentials; store the token with `taskrunner secret set NAME` and give NAME as secret_name",
        ));
    }
    match url.scheme() {
        "https" => Ok(url.to_string()),
        "http" if is_loopback_host(&url) => Ok(url.to_string()),
        "http" => Err(RequestError::field(
            field,
            format!(
                "{raw:?}: plain http would send the token unencrypted; use https (http is accepted only for loopback hosts)"
            ),
        )),
        other => Err(RequestError::field(
            field,
            format!("{raw:?}: scheme {other} is not supported; use {local_hint}"),
        )),
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests;
