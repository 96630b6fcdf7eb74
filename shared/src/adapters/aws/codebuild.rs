//! The AWS worker: each task runs as one CodeBuild build of the project from `template.yaml`.
//!
//! The build runs `infra/runner-buildspec.yml` (passed as `buildspecOverride`, so it is
//! self-contained): PRE_BUILD clones the repositories and runs the startup script, BUILD runs
//! the task and prints `[taskrunner] exit_code=N`, POST_BUILD keeps the build alive for a
//! while when the task asked for `terminate_on_completion: false`.
//!
//! Secret values never pass through this process: task secrets and git tokens are handed to
//! CodeBuild as `SECRETS_MANAGER` environment variables (the *name* of the secret), and
//! CodeBuild fetches them itself. CodeBuild's "Data protection" guide says strings specified
//! through Secrets Manager (project environment variables or buildspec `env/secrets-manager`)
//! are hidden in its build logs: it replaces each such value with `***` wherever it appears
//! in the output, so the log tail we read from CloudWatch Logs is already masked. Masking is
//! literal: a value the task transforms (base64, reversed) is not recognised.
//!
//! The deployment's tasks directory is an S3 prefix (`bucket/prefix/`, kept in sync with
//! `aws s3 sync`), handed to every build as the secondary source `tasks`; CodeBuild copies it
//! to `$CODEBUILD_SRC_DIR_tasks`, where the runner looks for the task file first, before
//! the checkout of the first repository (the embedded mode's order).
//!
//! What this backend does not do: GPU sizes (the project's environment type is
//! `LINUX_CONTAINER`), and idempotent start beyond CodeBuild's five-minute
//! idempotency-token window.

mod logs;
mod phases;
mod request;

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_codebuild::config::http::HttpResponse;
use aws_sdk_codebuild::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_codebuild::types::{
    Build, BuildPhaseType, EnvironmentVariable, ProjectSource, SortOrderType, SourceType,
    StatusType,
};
use chrono::{DateTime, Utc};

use crate::auth::task_token::TaskTokens;
use crate::ports::{
    LogTail, PortError, SecretStore, TaskPhase, TerminateReason, WorkerBackend, WorkerHandle,
    WorkerStatus, WorkerSummary,
};
use crate::task::{TaskId, TaskSpec, task_token_secret_name};

pub use request::{idempotency_token, timeout_minutes};

/// The runner buildspec, as deployed: hand it to [`CodeBuildConfig::buildspec`].
pub const RUNNER_BUILDSPEC: &str = include_str!("../../../../infra/runner-buildspec.yml");

/// The backend name in [`WorkerHandle::backend`].
pub const BACKEND: &str = "codebuild";

/// Prefix of a handle id that names a task whose build id is not known yet.
const TASK_HANDLE_PREFIX: &str = "task:";

/// How many pages of `ListBuildsForProject` (100 ids each, newest first) a lookup reads.
const MAX_LIST_PAGES: usize = 5;

/// How much log a status check reads to find the runner's exit-code and error lines.
const STATUS_LOG_BYTES: usize = 8 * 1024;

/// What [`CodeBuildWorker`] needs to know of the deployment.
#[derive(Clone, Debug)]
pub struct CodeBuildConfig {
    /// The CodeBuild project from `template.yaml`.
    pub project_name: String,
    /// Secrets Manager name prefix, e.g. `taskrunner/`.
    pub secret_prefix: String,
    /// Worker sizes and their compute types.
    pub sizes: crate::config::WorkerSizes,
    /// CloudWatch Logs group of the project (used when a build does not name its own).
    pub log_group: String,
    /// The runner buildspec ([`RUNNER_BUILDSPEC`]).
    pub buildspec: String,
    /// How long a kept build (`terminate_on_completion: false`) stays after its task ended,
    /// seconds: the build sleeps it out in POST_BUILD, the cleanup sweep stops it after that.
    /// The embedded mode's `keep_workspace_seconds`.
    pub keep_seconds: u64,
    /// The tasks directory: an S3 folder, `bucket/prefix/`, given to each build as the
    /// secondary source [`TASKS_SOURCE_ID`]. `None`: task files come from the checkout only.
    pub tasks_source: Option<String>,
    /// The `taskrunner` CLI the deployment ships: an S3 folder, `bucket/prefix/`, holding a
    /// Linux build named `taskrunner`, given to each build as the secondary source
    /// [`CLI_SOURCE_ID`]; the runner puts it first on the task's `PATH`.
    pub cli_source: Option<String>,
}

/// The source identifier of the tasks directory; the build finds it in
/// `$CODEBUILD_SRC_DIR_tasks`.
pub const TASKS_SOURCE_ID: &str = "tasks";

/// The source identifier of the shipped CLI; the build finds it in `$CODEBUILD_SRC_DIR_cli`.
pub const CLI_SOURCE_ID: &str = "cli";

/// Runs tasks as CodeBuild builds and reads their logs from CloudWatch Logs.
pub struct CodeBuildWorker {
    codebuild: aws_sdk_codebuild::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    config: CodeBuildConfig,
    task_api: Option<TaskApi>,
}

/// Where builds reach the API, and where their task tokens are minted and kept.
struct TaskApi {
    url: String,
    tokens: TaskTokens,
    secrets: Arc<dyn SecretStore>,
}

/// The retry settings the AWS clients should be built with: the standard mode, which retries
/// throttling, 5xx and timeouts with exponential backoff and jitter.
pub fn sdk_retry_config() -> aws_sdk_codebuild::config::retry::RetryConfig {
    aws_sdk_codebuild::config::retry::RetryConfig::standard().with_max_attempts(5)
}

impl CodeBuildWorker {
    /// A worker backend over the given clients.
    pub fn new(
        codebuild: aws_sdk_codebuild::Client,
        logs: aws_sdk_cloudwatchlogs::Client,
        config: CodeBuildConfig,
    ) -> Self {
        Self {
            codebuild,
            logs,
            config,
            task_api: None,
        }
    }

    /// Builds started from now on reach the API at `url` (`TASKRUNNER_API_URL`) with a task
    /// token, kept in `secrets` under [`task_token_secret_name`] and handed to the build as a
    /// Secrets Manager reference, so its value is in neither the StartBuild request nor the
    /// execution history.
    pub fn serve_tasks_at(mut self, url: impl Into<String>, secrets: Arc<dyn SecretStore>) -> Self {
        self.task_api = Some(TaskApi {
            url: url.into(),
            tokens: TaskTokens::new(Arc::clone(&secrets)),
            secrets,
        });
        self
    }

    /// The chaining variables of `spec`'s build (none without [`Self::serve_tasks_at`]).
    async fn chain_env(&self, spec: &TaskSpec) -> Result<Vec<EnvironmentVariable>, PortError> {
        let Some(api) = &self.task_api else {
            return Ok(Vec::new());
        };
        let token = api.tokens.mint_for(spec).await?;
        let name = task_token_secret_name(&spec.task_id);
        api.secrets.put(&name, &token).await?;
        request::chain_environment(&api.url, &self.config.secret_prefix, &name)
    }

    /// The build behind `handle`: by id, or (for a `task:` handle) by searching the newest
    /// builds of the project. `None` when a task has no build (yet).
    async fn build_of(&self, handle: &WorkerHandle) -> Result<Option<Build>, PortError> {
        if handle.backend != BACKEND {
            return Err(PortError::Permanent(format!(
                "worker handle {:?} belongs to backend {:?}, not {BACKEND:?}",
                handle.id, handle.backend
            )));
        }
        match handle.id.strip_prefix(TASK_HANDLE_PREFIX) {
            Some(task_id) => self.find_build(task_id).await,
            None => {
                let mut builds = self.batch_get(std::slice::from_ref(&handle.id)).await?;
                match builds.pop() {
                    Some(build) => Ok(Some(build)),
                    None => Err(PortError::Permanent(format!(
                        "CodeBuild build {:?} not found (deleted, or in another account or region?)",
                        handle.id
                    ))),
                }
            }
        }
    }

    /// The newest build of the project started for `task_id`, within the last
    /// `MAX_LIST_PAGES` pages of builds.
    async fn find_build(&self, task_id: &str) -> Result<Option<Build>, PortError> {
        let mut token = None;
        for _ in 0..MAX_LIST_PAGES {
            let (ids, next) = self.list_page(token).await?;
            for chunk in ids.chunks(100) {
                let builds = self.batch_get(chunk).await?;
                if let Some(build) = builds
                    .into_iter()
                    .find(|b| phases::env_var(b, request::TASK_ID_VAR) == Some(task_id))
                {
                    return Ok(Some(build));
                }
            }
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(None)
    }

    async fn list_page(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PortError> {
        let page = self
            .codebuild
            .list_builds_for_project()
            .project_name(&self.config.project_name)
            .sort_order(SortOrderType::Descending)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| sdk_error("ListBuildsForProject", e))?;
        Ok((page.ids().to_vec(), page.next_token().map(str::to_owned)))
    }

    /// Builds by id (at most 100), in the order CodeBuild returns them.
    async fn batch_get(&self, ids: &[String]) -> Result<Vec<Build>, PortError> {
        let out = self
            .codebuild
            .batch_get_builds()
            .set_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("BatchGetBuilds", e))?;
        Ok(out.builds().to_vec())
    }

    async fn tail_of(&self, build: &Build, max_bytes: usize) -> Result<LogTail, PortError> {
        let Some(location) = build.logs() else {
            return Ok(empty_tail());
        };
        let group = location.group_name().unwrap_or(&self.config.log_group);
        let Some(stream) = location.stream_name() else {
            return Ok(empty_tail());
        };
        logs::tail(&self.logs, group, stream, max_bytes).await
    }
}

/// An empty tail, for a build that has written nothing yet.
fn empty_tail() -> LogTail {
    LogTail {
        text: String::new(),
        truncated: false,
    }
}

#[async_trait]
impl WorkerBackend for CodeBuildWorker {
    async fn start(&self, spec: &TaskSpec) -> Result<WorkerHandle, PortError> {
        let mut plan = request::StartPlan::new(spec, &self.config)?;
        plan.env.extend(self.chain_env(spec).await?);
        let mut sources = Vec::new();
        for (location, id, what) in [
            (
                &self.config.tasks_source,
                TASKS_SOURCE_ID,
                "tasks directory",
            ),
            (&self.config.cli_source, CLI_SOURCE_ID, "taskrunner CLI"),
        ] {
            let Some(location) = location else { continue };
            sources.push(
                ProjectSource::builder()
                    .r#type(SourceType::S3)
                    .location(location)
                    .source_identifier(id)
                    .build()
                    .map_err(|e| {
                        PortError::Permanent(format!("{what} source {location:?}: {e}"))
                    })?,
            );
        }
        let sources = (!sources.is_empty()).then_some(sources);
        let out = self
            .codebuild
            .start_build()
            .project_name(&self.config.project_name)
            .compute_type_override(plan.compute_type)
            .timeout_in_minutes_override(plan.timeout_minutes)
            .buildspec_override(&self.config.buildspec)
            .idempotency_token(plan.idempotency_token)
            .set_environment_variables_override(Some(plan.env))
            .set_secondary_sources_override(sources)
            .send()
            .await
            .map_err(|e| sdk_error("StartBuild", e))?;
        let id = out.build_value().and_then(Build::id).ok_or_else(|| {
            PortError::Transient("StartBuild answered without a build id".to_owned())
        })?;
        Ok(WorkerHandle {
            backend: BACKEND.to_owned(),
            id: id.to_owned(),
        })
    }

    async fn status(&self, handle: &WorkerHandle) -> Result<WorkerStatus, PortError> {
        let Some(build) = self.build_of(handle).await? else {
            return Ok(WorkerStatus {
                task: TaskPhase::Pending,
                worker_alive: false,
            });
        };
        // The exit code and the runner's error line are only in the log.
        let hints = if phases::needs_log(&build) {
            match self.tail_of(&build, STATUS_LOG_BYTES).await {
                Ok(tail) => phases::LogHints::parse(&tail.text),
                Err(error) => {
                    tracing::warn!(build = ?build.id(), %error, "cannot read the build log");
                    phases::LogHints::default()
                }
            }
        } else {
            phases::LogHints::default()
        };
        Ok(phases::worker_status(&build, &hints, Utc::now()))
    }

    async fn log_tail(
        &self,
        handle: &WorkerHandle,
        max_bytes: usize,
    ) -> Result<LogTail, PortError> {
        match self.build_of(handle).await? {
            Some(build) => self.tail_of(&build, max_bytes).await,
            None => Ok(empty_tail()),
        }
    }

    async fn terminate(
        &self,
        handle: &WorkerHandle,
        reason: TerminateReason,
    ) -> Result<(), PortError> {
        let id = if handle.id.starts_with(TASK_HANDLE_PREFIX) {
            match self.build_of(handle).await? {
                Some(build) if build.build_status() == Some(&StatusType::InProgress) => {
                    build.id().unwrap_or_default().to_owned()
                }
                _ => return Ok(()),
            }
        } else {
            handle.id.clone()
        };
        tracing::info!(build = %id, ?reason, "stopping the CodeBuild build");
        match self.codebuild.stop_build().id(&id).send().await {
            Ok(_) => Ok(()),
            // Stopping a finished (or vanished) build is what we wanted anyway.
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err().code(),
                    Some("InvalidInputException" | "ResourceNotFoundException")
                ) =>
            {
                tracing::info!(build = %id, code = ?e.err().code(), "build was not running");
                Ok(())
            }
            Err(e) => Err(sdk_error("StopBuild", e)),
        }
    }

    fn handle_for(&self, task_id: &TaskId) -> WorkerHandle {
        WorkerHandle {
            backend: BACKEND.to_owned(),
            id: format!("{TASK_HANDLE_PREFIX}{task_id}"),
        }
    }

    async fn list(&self) -> Result<Vec<WorkerSummary>, PortError> {
        let mut found = Vec::new();
        let mut token = None;
        for _ in 0..MAX_LIST_PAGES {
            let (ids, next) = self.list_page(token).await?;
            for chunk in ids.chunks(100) {
                for build in self.batch_get(chunk).await? {
                    if build.build_status() != Some(&StatusType::InProgress) {
                        continue;
                    }
                    let Some(id) = build.id() else { continue };
                    found.push(WorkerSummary {
                        handle: WorkerHandle {
                            backend: BACKEND.to_owned(),
                            id: id.to_owned(),
                        },
                        task_id: phases::env_var(&build, request::TASK_ID_VAR)
                            .unwrap_or_default()
                            .to_owned(),
                        holds_resources: true,
                        keep_until: keep_until(&build),
                    });
                }
            }
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(found)
    }
}

/// Until when a kept build may stay: the end of its BUILD phase plus its keep time.
fn keep_until(build: &Build) -> Option<DateTime<Utc>> {
    let keep: i64 = phases::env_var(build, request::KEEP_VAR)?.parse().ok()?;
    if keep <= 0 {
        return None;
    }
    let ended = build
        .phases()
        .iter()
        .find(|p| p.phase_type() == Some(&BuildPhaseType::Build))?
        .end_time()?;
    Some(phases::to_chrono(ended)? + chrono::Duration::seconds(keep))
}

/// Codes of errors that say "slow down", whatever the service.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "LimitExceededException",
    "ServiceUnavailableException",
];

/// An SDK error as a [`PortError`]: throttling, 5xx, timeouts and network failures are
/// transient; anything else is permanent and names the operation and AWS's error code.
pub fn sdk_error<E>(operation: &str, error: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            PortError::Transient(format!(
                "{operation}: AWS did not answer ({}); will retry",
                error_chain(&error)
            ))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            let message = service.err().message().unwrap_or("no message");
            let status = service.raw().status().as_u16();
            if THROTTLING_CODES.contains(&code) || status >= 500 {
                PortError::Transient(format!(
                    "{operation}: {code} (HTTP {status}): {message}; will retry"
                ))
            } else {
                PortError::Permanent(format!("{operation} failed: {code}: {message}"))
            }
        }
        _ => PortError::Permanent(format!("{operation} failed: {}", error_chain(&error))),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod runner_tests;
#[cfg(test)]
mod tests;
