//! `taskrunner run REQUEST.json`: one request end to end in this process.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, Result};
use taskrunner::embedded::Embedded;
use taskrunner::http::{AppState, router};
use taskrunner::ports::{ExecutionStatus, Orchestrator, WorkerBackend};
use taskrunner::status::task_status;
use taskrunner::steps::{ExecutionInput, FinishOutput, callback_body};

use crate::EmbeddedArgs;
use crate::client::read_request;
use crate::serve::open_embedded;
use crate::settings;

/// Runs the request on the embedded engine, shows progress, prints the callback body.
pub async fn run(request: &Path, args: &EmbeddedArgs) -> Result<ExitCode> {
    let body = read_request(request)?;
    let data_dir = settings::data_dir(&args.data)?;
    let embedded = open_embedded(&data_dir, settings::config(args)?)?;
    let body = fresh_run(&*embedded.engine, &body).await?;
    let submitted = match embedded.service.submit(&body).await {
        Ok(submitted) => submitted,
        Err(err) => {
            eprintln!("error: {} ({})", err.message, err.status);
            return Ok(ExitCode::from(2));
        }
    };
    let task_id = submitted.task_id;
    let children_api = serve_children(&embedded).await?;
    let scheduler = embedded.start();
    let progress = Progress::new(&task_id);
    let execution = loop {
        let execution = embedded
            .engine
            .describe(&task_id)
            .await?
            .context("the task vanished from the engine's database")?;
        progress.show(
            &task_status(&execution).status,
            execution.current_state.as_deref(),
        );
        if execution.status != ExecutionStatus::Running {
            break execution;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    progress.finish();
    scheduler.abort();
    children_api.abort();

    let status = task_status(&execution);
    let input: ExecutionInput = serde_json::from_value(execution.input.clone())
        .context("the execution input is not a task")?;
    let end = match execution
        .output
        .clone()
        .map(serde_json::from_value::<FinishOutput>)
    {
        Some(Ok(output)) => Some(output),
        _ => None,
    };
    let worker = &embedded.worker;
    let tail = worker
        .log_tail(
            &worker.handle_for(&input.task.task_id),
            embedded.config.log_tail_bytes,
        )
        .await
        .unwrap_or(taskrunner::ports::LogTail {
            text: String::new(),
            truncated: false,
        });
    match &end {
        Some(output) => {
            let mut body = callback_body(&input.task, &output.end(), tail);
            body.children = taskrunner::chain::children(&*embedded.engine, &execution).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            match &output.callback {
                Some(report) => eprintln!(
                    "callback delivered to {} (HTTP {}, webhook-id {})",
                    input.task.callback_url.as_deref().unwrap_or_default(),
                    report
                        .status_code
                        .map_or("-".into(), |code| code.to_string()),
                    report.webhook_id
                ),
                None => eprintln!("no callback_url in the request: the body above was not sent"),
            }
            Ok(if output.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        None => {
            println!("{}", serde_json::to_string_pretty(&status)?);
            if let Some(error) = status
                .callback
                .as_ref()
                .and_then(|callback| callback.error.as_ref())
            {
                eprintln!("the callback could not be delivered: {error}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// A loopback API for the run's task, so it can start children with its task token
/// (`TASKRUNNER_API_URL`); no API key is accepted there. It stops when the run ends; children
/// still running then go on under the next `taskrunner serve` on this data directory.
async fn serve_children(embedded: &Embedded) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot open a loopback port for the task's children")?;
    let url = crate::serve::task_api_url(listener.local_addr()?);
    let state = Arc::new(AppState {
        service: embedded.service.clone(),
        api_keys: embedded.api_keys(None),
        public_url: Some(url.clone()),
    });
    embedded.serve_tasks_at(url);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    }))
}

/// Every `run` is a new run: when the request's `task_id` is already taken in this data
/// directory (an earlier run, or another clone sharing the per-user directory), the request is
/// run as `<task_id>-2`, `-3`, ..., the first id not taken. Submits through the API keep
/// their idempotency; this is only the one-off command's choice.
async fn fresh_run(engine: &dyn Orchestrator, body: &[u8]) -> Result<Vec<u8>> {
    let Ok(mut request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(body.to_vec()); // not JSON: the submit says what is wrong
    };
    // Clients of the original send the object as a JSON string; unwrap it the same way.
    if let Some(inner) = request
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
    {
        request = inner;
    }
    let Some(task_id) = request
        .get("task_id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(body.to_vec());
    };
    if engine.describe(&task_id).await?.is_none() {
        return Ok(body.to_vec());
    }
    let mut n = 2;
    loop {
        let candidate = format!("{task_id}-{n}");
        n += 1;
        if engine.describe(&candidate).await?.is_none() {
            eprintln!(
                "task_id {task_id} has run before in this data directory; this is a new run: {candidate} (pass --data-dir to keep runs apart)"
            );
            request["task_id"] = candidate.into();
            return Ok(serde_json::to_vec(&request)?);
        }
    }
}

/// A one-line progress display on stderr: state and elapsed time.
struct Progress {
    task_id: String,
    started: Instant,
    terminal: bool,
    last: std::sync::Mutex<String>,
}

impl Progress {
    fn new(task_id: &str) -> Self {
        Self {
            task_id: task_id.to_owned(),
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new(String::new()),
        }
    }

    fn show(&self, status: &str, state: Option<&str>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let line = format!("{}: {status} ({})", self.task_id, state.unwrap_or("-"));
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.terminal {
            eprint!("\r\x1b[2K{line}  {elapsed:.1}s");
            std::io::stderr().flush().ok();
        } else if *last != line {
            eprintln!("{line}  {elapsed:.1}s");
        }
        *last = line;
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
