//! The embedded mode, assembled: SQLite secret store, local process workers, the engine
//! running `infra/state-machine.asl.json`, and the steps wired in as its Task handlers.
//!
//! `taskrunner serve`, `taskrunner run` and the end-to-end tests all build it here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::adapters::local::gate::LocalGate;
use crate::adapters::local::secrets::LocalSecretStore;
use crate::adapters::local::tokens::LocalTaskTokens;
use crate::adapters::local::worker::{LocalWorker, LocalWorkerConfig};
use crate::auth::ApiKeys;
use crate::callback::{CallbackPolicy, CallbackSender, check_callback_url};
use crate::chain::ChildIndex;
use crate::config::Config;
use crate::engine::Engine;
use crate::ports::{Clock, ExecutionStatus, Orchestrator, SecretStore};
use crate::secret::Secret;
use crate::service::TaskService;
use crate::steps::{self, CleanupReport, PollInput, StepError, Steps};

pub use crate::steps::step_handlers;

/// The state machine definition, compiled in so the binary runs from anywhere.
pub const STATE_MACHINE: &str = include_str!("../../infra/state-machine.asl.json");

/// Names the Task states' `${...}Arn` placeholders resolve to in the embedded mode.
pub fn substitutions() -> HashMap<String, String> {
    [
        ("SubmitFunctionArn", "submit"),
        ("PollWorkerFunctionArn", "poll-worker"),
        ("FinishAndCallbackFunctionArn", "finish-and-callback"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// How to build the embedded stack.
pub struct EmbeddedOptions {
    /// Data directory: databases, key file, workspaces, logs.
    pub data_dir: PathBuf,
    /// Configuration.
    pub config: Config,
    /// The program started as the worker host that runs the tasks (the `taskrunner` binary).
    pub supervisor_program: PathBuf,
    /// Directory relative repository paths in requests are resolved against.
    pub base_dir: PathBuf,
    /// The clock (a manual one in tests).
    pub clock: Arc<dyn Clock>,
}

/// The assembled embedded mode.
pub struct Embedded {
    /// Configuration.
    pub config: Arc<Config>,
    /// The secret store.
    pub secrets: Arc<dyn SecretStore>,
    /// The local worker backend.
    pub worker: Arc<LocalWorker>,
    /// The engine (also the orchestrator).
    pub engine: Arc<Engine>,
    /// The steps.
    pub steps: Arc<Steps>,
    /// The task operations.
    pub service: TaskService,
}

/// The worker of `task_id` ended (or may have): when its execution watches it, the run
/// state the poll step computes resumes the execution's wait, as the worker's end event
/// does in AWS. A wait not open yet is armed later, and its arming checks the worker.
async fn resume_ended(steps: &Steps, engine: &Engine, task_id: &str) {
    let input = match engine.describe(task_id).await {
        Ok(Some(execution)) if execution.status == ExecutionStatus::Running => execution
            .state_input
            .and_then(|input| serde_json::from_value::<PollInput>(input).ok()),
        _ => None,
    };
    // A task waiting in line has no worker to have ended (its short wait asks the line).
    let Some(input) = input.filter(|input| !input.run.done && input.run.phase != "queued") else {
        return;
    };
    let resumed = match steps::poll_worker(steps, input).await {
        Ok(run) if run.done => match serde_json::to_value(&run) {
            Ok(output) => steps.tokens.resume(task_id, &output).await,
            Err(err) => Err(crate::ports::PortError::Permanent(err.to_string())),
        },
        Ok(_) => return,
        Err(err) => Err(crate::ports::PortError::Transient(err.to_string())),
    };
    match resumed {
        Ok(resumed) => tracing::debug!(task_id, resumed, "worker ended"),
        Err(err) => {
            tracing::warn!(task_id, error = %err, "worker ended, but its wait could not be resumed; the safety net will see it")
        }
    }
}

/// The callback policy a configuration describes.
pub fn callback_policy(config: &Config) -> Result<CallbackPolicy, String> {
    let mut cidrs = Vec::new();
    for cidr in &config.callback.allow_cidrs {
        cidrs.push(cidr.parse().map_err(|err| {
            format!("callback.allow_cidrs: {cidr:?} is not a CIDR range ({err})")
        })?);
    }
    Ok(CallbackPolicy {
        timeout: Duration::from_secs(config.callback.timeout_seconds),
        allow_hosts: config.callback.allow_hosts.clone(),
        allow_cidrs: cidrs,
        allow_loopback: config.callback.allow_loopback,
        require_https: config.callback.require_https,
    })
}

impl Embedded {
    /// Opens the data directory and builds everything. Nothing runs until
    /// [`Embedded::start`] (or [`Engine::run_until_idle`]).
    pub fn open(options: EmbeddedOptions) -> Result<Self, String> {
        let EmbeddedOptions {
            data_dir,
            config,
            supervisor_program,
            base_dir,
            clock,
        } = options;
        let config = Arc::new(config);
        let policy = callback_policy(&config)?;
        let secrets: Arc<dyn SecretStore> =
            Arc::new(LocalSecretStore::open(&data_dir).map_err(|err| err.to_string())?);

        // The worker's end resumes its execution's wait; the steps and the engine are built
        // after the worker, so the hook finds them through this slot.
        let slot: Arc<OnceLock<(Weak<Steps>, Weak<Engine>)>> = Arc::new(OnceLock::new());
        let on_end = {
            let slot = Arc::clone(&slot);
            Arc::new(move |task_id: &str| {
                let Some((Some(steps), Some(engine))) = slot
                    .get()
                    .map(|(steps, engine)| (steps.upgrade(), engine.upgrade()))
                else {
                    return;
                };
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let task_id = task_id.to_owned();
                runtime.spawn(async move { resume_ended(&steps, &engine, &task_id).await });
            })
        };
        let mut worker = LocalWorker::new(
            LocalWorkerConfig {
                tasks_dir: config.tasks_dir.clone(),
                keep_workspace_for: Duration::from_secs(config.keep_workspace_seconds),
                task_nice: config.task_nice,
                ..LocalWorkerConfig::new(&data_dir, supervisor_program)
            },
            Arc::clone(&secrets),
        );
        worker.on_task_end(on_end);
        let worker = Arc::new(worker);
        let tokens = Arc::new(LocalTaskTokens::new(&data_dir));

        let steps = Arc::new(Steps {
            config: Arc::clone(&config),
            secrets: Arc::clone(&secrets),
            worker: worker.clone(),
            clock: Arc::clone(&clock),
            callbacks: Arc::new(CallbackSender::new(policy.clone())),
            gate: Some(Arc::new(
                LocalGate::open(
                    &data_dir.join("line.db"),
                    config.max_running_tasks,
                    config.per_key_limit,
                )
                .map_err(|err| err.to_string())?,
            )),
            children: ChildIndex::default(),
            tokens: tokens.clone(),
        });
        let engine = Engine::open(
            &data_dir.join("engine.db"),
            STATE_MACHINE,
            &substitutions(),
            step_handlers(&steps),
            clock,
        )
        .map_err(|err| err.to_string())?;
        tokens.attach(&engine);
        let _ = slot.set((Arc::downgrade(&steps), Arc::downgrade(&engine)));
        let orchestrator: Arc<dyn Orchestrator> = engine.clone();
        steps.children.attach(&orchestrator);

        let service = TaskService {
            config: Arc::clone(&config),
            secrets: Arc::clone(&secrets),
            worker: worker.clone(),
            orchestrator: engine.clone(),
            allow_local_repositories: true,
            concurrency_keys: true,
            base_dir,
            check_callback_url: Arc::new(move |url: &str| {
                check_callback_url(url, &policy).map(|_| ())
            }),
            tokens,
        };
        Ok(Self {
            config,
            secrets,
            worker,
            engine,
            steps,
            service,
        })
    }

    /// Starts the engine's scheduler and re-attaches to workers left running by a previous
    /// process, so every accepted task goes on; the executions of workers that ended while
    /// no process watched are resumed now, not at their safety net.
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        self.worker.reattach();
        let scheduler = self.engine.spawn_scheduler();
        let (steps, engine) = (Arc::clone(&self.steps), Arc::clone(&self.engine));
        tokio::spawn(async move {
            let running = match engine
                .list(Some(ExecutionStatus::Running), usize::MAX)
                .await
            {
                Ok(running) => running,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list the running tasks to resume");
                    return;
                }
            };
            for execution in running {
                resume_ended(&steps, &engine, &execution.name).await;
            }
        });
        scheduler
    }

    /// Tasks started from now on reach the API at `url` (a loopback URL of the server) and
    /// get a task token to start children with.
    pub fn serve_tasks_at(&self, url: impl Into<String>) {
        self.worker.serve_tasks_at(url);
    }

    /// API keys: those stored, plus a static one.
    pub fn api_keys(&self, static_key: Option<Secret>) -> ApiKeys {
        ApiKeys::new(Arc::clone(&self.secrets), static_key)
    }

    /// Runs the cleanup sweep once.
    pub async fn cleanup(&self) -> Result<CleanupReport, StepError> {
        steps::cleanup(&self.steps, self.engine.as_ref()).await
    }
}
