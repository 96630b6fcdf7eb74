//! `taskrunner`: serve the API, run a request end to end, talk to a server, manage secrets.

mod admin;
mod client;
mod list;
mod lock;
mod logging;
mod run;
mod serve;
mod settings;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run .py and .sh tasks on workers and POST their results to callback URLs.
#[derive(Debug, Parser)]
#[command(name = "taskrunner", version, about, propagate_version = true)]
struct Cli {
    /// Log format: `pretty` (default on a terminal), `compact`, or `json`.
    #[arg(long, global = true, env = "TASKRUNNER_LOG_FORMAT")]
    log_format: Option<logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// Where local state lives.
#[derive(Debug, Clone, clap::Args)]
struct DataArgs {
    /// Data directory (SQLite files, key file, workspaces, logs).
    #[arg(long, env = "TASKRUNNER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// How the embedded stack is configured.
#[derive(Debug, Clone, clap::Args)]
struct EmbeddedArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Tasks directory, searched first for task files (default ./tasks when it exists).
    #[arg(long, env = "TASKRUNNER_TASKS_DIR")]
    tasks_dir: Option<PathBuf>,
    /// TOML configuration file (worker sizes, limits, callback policy).
    #[arg(long, env = "TASKRUNNER_CONFIG")]
    config: Option<PathBuf>,
}

/// Which server to talk to.
#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// Base URL of the taskrunner API.
    #[arg(
        long,
        env = "TASKRUNNER_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// API key sent as `Authorization: Bearer`.
    #[arg(long, env = "TASKRUNNER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API with the embedded engine, secret store and local workers.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "TASKRUNNER_LISTEN")]
        listen: Option<String>,
        #[command(flatten)]
        embedded: EmbeddedArgs,
    },
    /// Run one request end to end in this process; print the callback body; exit 0 on success.
    Run {
        /// The request: a JSON file as POSTed to /task-runner (`-` for stdin).
        request: PathBuf,
        #[command(flatten)]
        embedded: EmbeddedArgs,
    },
    /// Submit a request to a server.
    Submit {
        /// The request JSON file (`-` for stdin).
        request: PathBuf,
        /// Wait for the task to end; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List tasks, newest first, as a table (like `gh run list`).
    List {
        /// Only tasks with this status: running, queued, succeeded, failed, timed_out,
        /// cancelled, error.
        #[arg(long)]
        status: Option<String>,
        /// How many tasks (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Redraw every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print the API's JSON instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a task's status, its current state and time in it, and its state history.
    Status {
        /// The task id.
        task_id: String,
        /// Print the API's status JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a task's log tail.
    Logs {
        /// The task id.
        task_id: String,
        /// Keep printing new output until the task ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a task: its worker is terminated and its callback says `cancelled`.
    Cancel {
        /// The task id.
        task_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage secrets (git tokens, task secrets, the callback signing secret).
    #[command(subcommand)]
    Secret(admin::SecretCommand),
    /// Manage API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(admin::ApiKeyCommand),
    /// Check a received callback's signature (Standard Webhooks), with the secret in
    /// `TASKRUNNER_CALLBACK_SECRET`; exits 0 when valid.
    VerifyCallback {
        /// The raw body as received (a file, or `-` for stdin).
        body: PathBuf,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header.
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header.
        #[arg(long)]
        signature: String,
        /// Seconds the timestamp may be away from now.
        #[arg(long, default_value_t = 300)]
        tolerance: u64,
    },
    /// Run the cleanup sweep once.
    Cleanup {
        #[command(flatten)]
        embedded: EmbeddedArgs,
    },
    /// (internal) Run the local tasks of a data directory; started by the local worker
    /// backend on demand.
    #[command(hide = true)]
    WorkerHost {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// How many nice levels below its starter the host and its tasks run.
        #[arg(long, default_value_t = 0)]
        nice: u8,
    },
}

/// mimalloc instead of glibc's malloc: `serve` allocates and frees many small values per
/// step (the engine's JSON), which glibc's allocator made a fifth of its CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::WorkerHost { data_dir, nice } = &cli.command {
        let code = taskrunner::adapters::local::run_host(data_dir, *nice);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { listen, embedded } => serve::serve(listen, &embedded).await,
            Command::Run { request, embedded } => run::run(&request, &embedded).await,
            Command::Submit { request, wait, api } => client::submit(&request, wait, &api).await,
            Command::List {
                status,
                limit,
                watch,
                json,
                api,
            } => {
                let args = list::ListArgs {
                    status,
                    limit,
                    watch,
                    json,
                };
                list::list(&args, &api).await
            }
            Command::Status { task_id, json, api } => status::status(&task_id, json, &api).await,
            Command::Logs {
                task_id,
                follow,
                api,
            } => client::logs(&task_id, follow, &api).await,
            Command::Cancel { task_id, api } => client::cancel(&task_id, &api).await,
            Command::Secret(command) => admin::secret(command).await,
            Command::ApiKey(command) => admin::api_key(command).await,
            Command::Cleanup { embedded } => serve::cleanup_once(&embedded).await,
            Command::VerifyCallback {
                body,
                id,
                timestamp,
                signature,
                tolerance,
            } => verify::verify_callback(&body, &id, &timestamp, &signature, tolerance),
            Command::WorkerHost { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
