//! The Lambda functions' entry points: each binary in `functions/` calls one of these.
//!
//! Configuration comes from the environment `template.yaml` sets; AWS clients are built once
//! at init from the default credential chain and make no call until the first event.

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;

use crate::adapters::aws::codebuild::{CodeBuildConfig, CodeBuildWorker};
use crate::adapters::aws::http_client::deferred_default_client;
use crate::adapters::aws::line::DynamoDbGate;
use crate::adapters::aws::secrets::AwsSecretStore;
use crate::adapters::aws::sfn::StepFunctions;
use crate::adapters::aws::tokens::DynamoDbTaskTokens;
use crate::adapters::line::LineLimits;
use crate::auth::ApiKeys;
use crate::callback::{CallbackSender, check_callback_url};
use crate::chain::ChildIndex;
use crate::config::Config;
use crate::embedded::callback_policy;
use crate::engine::{TaskFailure, TaskHandler};
use crate::http::{AppState, router};
use crate::ports::{
    ConcurrencyGate, Orchestrator, PortError, SecretStore, TaskTokens, WorkerBackend,
};
use crate::secret::Secret;
use crate::service::TaskService;
use crate::steps::{EventOutcome, Step, StepError, StepHandler, Steps};

/// Settings only the AWS deployment has, from `TASKRUNNER_*` variables.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// Secrets Manager name prefix (`TASKRUNNER_SECRET_PREFIX`, default `taskrunner/`).
    pub secret_prefix: String,
    /// The state machine (`TASKRUNNER_STATE_MACHINE_ARN`; api, worker-events and cleanup).
    pub state_machine_arn: Option<String>,
    /// The CodeBuild project (`TASKRUNNER_CODEBUILD_PROJECT`).
    pub codebuild_project: String,
    /// Its log group (`TASKRUNNER_CODEBUILD_LOG_GROUP`).
    pub codebuild_log_group: String,
    /// The tasks directory, an S3 folder `bucket/prefix/` (`TASKRUNNER_TASKS_S3_LOCATION`).
    pub tasks_s3_location: Option<String>,
    /// The DynamoDB table of the task line (`TASKRUNNER_TASK_LINE_TABLE`); without it there
    /// is no line: `concurrency_key` is refused and the deployment-wide limit is CodeBuild's.
    pub task_line_table: Option<String>,
    /// The S3 folder `bucket/prefix/` holding the `taskrunner` CLI for the workers
    /// (`TASKRUNNER_CLI_S3_LOCATION`).
    pub cli_s3_location: Option<String>,
    /// The DynamoDB table waiting executions' task tokens are kept in
    /// (`TASKRUNNER_TASK_TOKEN_TABLE`, default the task line's table).
    pub task_token_table: Option<String>,
}

impl AwsSettings {
    /// Reads the settings; says which variable is missing.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                format!("{name} is not set; template.yaml sets it for every function")
            })
        };
        Ok(Self {
            secret_prefix: var("TASKRUNNER_SECRET_PREFIX").unwrap_or_else(|| "taskrunner/".into()),
            state_machine_arn: var("TASKRUNNER_STATE_MACHINE_ARN"),
            codebuild_project: required("TASKRUNNER_CODEBUILD_PROJECT")?,
            codebuild_log_group: required("TASKRUNNER_CODEBUILD_LOG_GROUP")?,
            tasks_s3_location: var("TASKRUNNER_TASKS_S3_LOCATION")
                .map(|location| {
                    s3_folder(
                        "TASKRUNNER_TASKS_S3_LOCATION",
                        &location,
                        "the tasks directory, e.g. my-bucket/tasks/",
                    )
                })
                .transpose()?,
            cli_s3_location: var("TASKRUNNER_CLI_S3_LOCATION")
                .map(|location| {
                    s3_folder(
                        "TASKRUNNER_CLI_S3_LOCATION",
                        &location,
                        "the taskrunner CLI for the workers, e.g. my-bucket/cli/",
                    )
                })
                .transpose()?,
            task_token_table: var("TASKRUNNER_TASK_TOKEN_TABLE")
                .or_else(|| var("TASKRUNNER_TASK_LINE_TABLE")),
            task_line_table: var("TASKRUNNER_TASK_LINE_TABLE"),
        })
    }
}

/// `bucket/prefix/` as CodeBuild wants an S3 folder source, from that or `s3://bucket/prefix`;
/// the error names the variable and what the folder holds.
fn s3_folder(variable: &str, value: &str, holding: &str) -> Result<String, String> {
    let location = value.strip_prefix("s3://").unwrap_or(value);
    match location.split_once('/') {
        Some((bucket, _)) if !bucket.is_empty() => {
            Ok(format!("{}/", location.trim_end_matches('/')))
        }
        _ => Err(format!(
            "{variable} {value:?}: expected BUCKET/PREFIX/ (the S3 folder holding {holding})"
        )),
    }
}

/// The AWS adapters and steps, built once per Lambda instance.
pub struct AwsStack {
    /// Configuration (defaults and `TASKRUNNER_*` variables).
    pub config: Arc<Config>,
    /// AWS-only settings.
    pub settings: AwsSettings,
    /// Secrets Manager.
    pub secrets: Arc<dyn SecretStore>,
    /// CodeBuild workers.
    pub worker: Arc<dyn WorkerBackend>,
    /// The steps.
    pub steps: Arc<Steps>,
    sdk: SdkConfig,
}

impl AwsStack {
    /// Builds everything from the environment and an SDK configuration. No network call.
    pub fn new(sdk: SdkConfig) -> Result<Self, String> {
        let mut config = Config::load(None)?;
        // Lambda callbacks never go to the function's own loopback.
        if std::env::var("TASKRUNNER_CALLBACK_ALLOW_LOOPBACK").is_err() {
            config.callback.allow_loopback = false;
        }
        let config = Arc::new(config);
        let settings = AwsSettings::from_env()?;
        let secrets: Arc<dyn SecretStore> = Arc::new(AwsSecretStore::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            settings.secret_prefix.clone(),
        ));
        let mut worker = CodeBuildWorker::new(
            aws_sdk_codebuild::Client::new(&sdk),
            aws_sdk_cloudwatchlogs::Client::new(&sdk),
            CodeBuildConfig {
                project_name: settings.codebuild_project.clone(),
                secret_prefix: settings.secret_prefix.clone(),
                sizes: config.worker_sizes.clone(),
                log_group: settings.codebuild_log_group.clone(),
                buildspec: crate::adapters::aws::codebuild::RUNNER_BUILDSPEC.to_owned(),
                keep_seconds: config.keep_workspace_seconds,
                tasks_source: settings.tasks_s3_location.clone(),
                cli_source: settings.cli_s3_location.clone(),
            },
        );
        // Tasks reach the API through its public URL to start children (the submit function).
        if let Some(url) = std::env::var("TASKRUNNER_TASK_API_URL")
            .ok()
            .filter(|url| !url.is_empty())
        {
            worker = worker.serve_tasks_at(url, Arc::clone(&secrets));
        }
        let worker: Arc<dyn WorkerBackend> = Arc::new(worker);
        // One client per service, shared by the adapters that call it.
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let sfn = aws_sdk_sfn::Client::new(&sdk);
        let gate = settings.task_line_table.as_ref().map(|table| {
            Arc::new(DynamoDbGate::new(
                dynamodb.clone(),
                table,
                LineLimits {
                    max_running: config.max_running_tasks,
                    per_key: config.per_key_limit,
                },
            )) as Arc<dyn ConcurrencyGate>
        });
        let tokens: Arc<dyn TaskTokens> = match &settings.task_token_table {
            Some(table) => Arc::new(DynamoDbTaskTokens::new(
                dynamodb.clone(),
                sfn.clone(),
                table,
            )),
            None => Arc::new(NoTokenTable),
        };
        let steps = Arc::new(Steps {
            tokens,
            config: Arc::clone(&config),
            secrets: Arc::clone(&secrets),
            worker: Arc::clone(&worker),
            clock: Arc::new(crate::clock::SystemClock),
            callbacks: Arc::new(CallbackSender::new(callback_policy(&config)?)),
            gate,
            // The finish step lists a task's children in the state machine it is told it runs in.
            children: ChildIndex::by_state_machine(move |arn: &str| -> Arc<dyn Orchestrator> {
                Arc::new(StepFunctions::new(sfn.clone(), arn))
            }),
        });
        Ok(Self {
            config,
            settings,
            secrets,
            worker,
            steps,
            sdk,
        })
    }

    /// The Step Functions orchestrator (api, worker-events and cleanup).
    pub fn orchestrator(&self) -> Result<Arc<dyn Orchestrator>, String> {
        let arn = self.settings.state_machine_arn.clone().ok_or_else(|| {
            "TASKRUNNER_STATE_MACHINE_ARN is not set; template.yaml sets it for the api, worker-events and cleanup functions".to_owned()
        })?;
        Ok(Arc::new(StepFunctions::new(
            aws_sdk_sfn::Client::new(&self.sdk),
            arn,
        )))
    }
}

/// Without a table there is nowhere to keep a task token: waiting fails with what to set.
struct NoTokenTable;

#[async_trait::async_trait]
impl TaskTokens for NoTokenTable {
    async fn keep(&self, _: &str, _: &str) -> Result<(), PortError> {
        Err(PortError::Permanent(
            "no table for task tokens: set TASKRUNNER_TASK_TOKEN_TABLE (or TASKRUNNER_TASK_LINE_TABLE), as template.yaml does".into(),
        ))
    }
    async fn resume(&self, _: &str, _: &serde_json::Value) -> Result<bool, PortError> {
        Ok(false)
    }
    async fn fail(&self, _: &str, _: &str, _: &str) -> Result<bool, PortError> {
        Ok(false)
    }
}

/// Loads the SDK configuration (region and credentials resolve lazily, at the first call; so
/// does the HTTPS client's root certificate store, see [`deferred_default_client`]).
pub async fn sdk_config() -> SdkConfig {
    let behavior = BehaviorVersion::latest();
    let mut loader = aws_config::defaults(behavior);
    if let Some(client) = deferred_default_client(behavior) {
        loader = loader.http_client(client);
    }
    loader.load().await
}

/// Runs a step function (`submit`, `poll-worker`, `finish-and-callback`) until Lambda stops it.
pub async fn run_step(step: Step) -> Result<(), lambda_runtime::Error> {
    let stack = AwsStack::new(sdk_config().await)?;
    let handler = Arc::new(StepHandler::new(Arc::clone(&stack.steps), step));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = Arc::clone(&handler);
        async move { handler.invoke(event.payload).await.map_err(StepFailure) }
    }))
    .await
}

/// Runs the cleanup sweep on each scheduled event.
pub async fn run_cleanup() -> Result<(), lambda_runtime::Error> {
    let stack = Arc::new(AwsStack::new(sdk_config().await)?);
    let orchestrator = stack.orchestrator()?;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| {
        let (stack, orchestrator) = (Arc::clone(&stack), Arc::clone(&orchestrator));
        async move { answer(crate::steps::cleanup(&stack.steps, orchestrator.as_ref()).await) }
    }))
    .await
}

/// Runs the worker-events function: each CodeBuild event the EventBridge rule delivers may
/// resume the execution waiting for that build. Events that concern no open wait are
/// answered (and logged at debug), so EventBridge does not retry them; the event itself is
/// never logged.
pub async fn run_worker_events() -> Result<(), lambda_runtime::Error> {
    let stack = Arc::new(AwsStack::new(sdk_config().await)?);
    let orchestrator = stack.orchestrator()?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (stack, orchestrator) = (Arc::clone(&stack), Arc::clone(&orchestrator));
        async move {
            let outcome = crate::steps::on_worker_event(
                &stack.steps,
                orchestrator.as_ref(),
                &stack.settings.codebuild_project,
                &event.payload,
            )
            .await;
            match &outcome {
                Ok(EventOutcome::Resumed { task_id }) => {
                    tracing::info!(task_id, "the worker ended; its execution was resumed");
                }
                Ok(EventOutcome::Ignored { reason }) => tracing::debug!(reason, "event ignored"),
                Err(_) => {}
            }
            answer(outcome)
        }
    }))
    .await
}

/// Serves the HTTP API (the same router as `taskrunner serve`) behind API Gateway.
pub async fn run_api() -> Result<(), lambda_runtime::Error> {
    let stack = AwsStack::new(sdk_config().await)?;
    let app = api_router(&stack)?;
    lambda_http::run(app).await
}

/// The API router over the AWS adapters.
pub fn api_router(stack: &AwsStack) -> Result<axum::Router, String> {
    let policy = callback_policy(&stack.config)?;
    let service = TaskService {
        config: Arc::clone(&stack.config),
        secrets: Arc::clone(&stack.secrets),
        worker: Arc::clone(&stack.worker),
        orchestrator: stack.orchestrator()?,
        allow_local_repositories: false,
        // With a task line, a concurrency_key queues as in the embedded mode.
        concurrency_keys: stack.steps.gate.is_some(),
        base_dir: std::path::PathBuf::from("/"),
        check_callback_url: Arc::new(move |url: &str| check_callback_url(url, &policy).map(|_| ())),
        tokens: Arc::clone(&stack.steps.tokens),
    };
    let static_key = std::env::var("TASKRUNNER_API_KEY").ok().map(Secret::new);
    let key_secret = std::env::var("TASKRUNNER_API_KEY_SECRET_NAME").unwrap_or_default();
    let state = Arc::new(AppState {
        api_keys: ApiKeys::new(Arc::clone(&stack.secrets), static_key)
            .with_key_from_secret(key_secret),
        service,
        public_url: stack.config.public_url.clone(),
    });
    Ok(router(state))
}

/// A step's result as the function's answer, or its error as Lambda reports it.
fn answer<T: serde::Serialize>(result: Result<T, StepError>) -> Result<Value, StepFailure> {
    let value = result.map_err(|err| StepFailure(TaskFailure::new(err.error, err.cause)))?;
    serde_json::to_value(value)
        .map_err(|err| StepFailure(TaskFailure::new("TaskRunner.BadInput", err.to_string())))
}

/// A step's failure as Lambda reports it: `errorType` is the name the state machine's
/// `Retry` and `Catch` match on.
#[derive(Debug)]
pub struct StepFailure(pub TaskFailure);

impl From<StepFailure> for Diagnostic {
    fn from(failure: StepFailure) -> Self {
        Diagnostic {
            error_type: failure.0.error,
            error_message: failure.0.cause,
        }
    }
}

/// Logs as JSON lines without timestamps (CloudWatch adds them), level from `RUST_LOG`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .try_init();
}
