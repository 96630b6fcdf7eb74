//! Commands that talk to a running server: submit, status, logs, cancel.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::ApiArgs;

pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    pub(crate) fn new(args: &ApiArgs) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        // Inside a task, the task's own token (scoped to its children) stands in for a key.
        let key = args
            .api_key
            .clone()
            .or_else(|| std::env::var("TASKRUNNER_TASK_TOKEN").ok())
            .filter(|key| !key.is_empty());
        Ok(Self {
            http,
            base: args.api.trim_end_matches('/').to_owned(),
            key,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach {url}; is `taskrunner serve` running there? (--api sets the URL)")
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    pub(crate) async fn expect_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("the server answered {status}: {message}");
        }
        Ok(value)
    }
}

/// Reads a request file, or stdin for `-`.
pub fn read_request(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
            .context("cannot read the request from stdin")?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("cannot read request file {}", path.display()))
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `taskrunner submit`.
pub async fn submit(request: &Path, wait: bool, args: &ApiArgs) -> Result<ExitCode> {
    let api = Api::new(args)?;
    let body = read_request(request)?;
    let accepted = api
        .expect_ok(reqwest::Method::POST, "/task-runner", Some(body))
        .await?;
    let task_id = accepted
        .get("task_id")
        .and_then(Value::as_str)
        .context("the server's answer has no task_id")?
        .to_owned();
    if !wait {
        print(&accepted);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("task {task_id} accepted; waiting for it to end");
    let status = wait_for_end(&api, &task_id).await?;
    print(&status);
    Ok(exit_code(&status))
}

async fn wait_for_end(api: &Api, task_id: &str) -> Result<Value> {
    let mut delay = Duration::from_millis(250);
    let mut shown = String::new();
    loop {
        let status = api
            .expect_ok(
                reqwest::Method::GET,
                &format!("/task-runner/{task_id}"),
                None,
            )
            .await?;
        let word = status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if word != shown {
            eprintln!("task {task_id}: {word}");
            shown = word.to_owned();
        }
        let delivered_or_none = status
            .get("callback")
            .map(|callback| {
                callback.is_null()
                    || callback.get("delivered") == Some(&Value::Bool(true))
                    || callback.get("error").is_some_and(|e| !e.is_null())
            })
            .unwrap_or(true);
        if status.get("done") == Some(&Value::Bool(true)) && delivered_or_none {
            return Ok(status);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn exit_code(status: &Value) -> ExitCode {
    if status.get("success") == Some(&Value::Bool(true)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `taskrunner cancel`.
pub async fn cancel(task_id: &str, args: &ApiArgs) -> Result<ExitCode> {
    show_task(reqwest::Method::DELETE, task_id, args).await
}

/// Calls `/task-runner/{task_id}` with `method` and prints the task's status.
async fn show_task(method: reqwest::Method, task_id: &str, args: &ApiArgs) -> Result<ExitCode> {
    let api = Api::new(args)?;
    let status = api
        .expect_ok(method, &format!("/task-runner/{task_id}"), None)
        .await?;
    print(&status);
    Ok(ExitCode::SUCCESS)
}

/// `taskrunner logs [--follow]`.
pub async fn logs(task_id: &str, follow: bool, args: &ApiArgs) -> Result<ExitCode> {
    let api = Api::new(args)?;
    let path = format!("/task-runner/{task_id}/logs?max_bytes=16777216");
    let mut printed = String::new();
    loop {
        let tail = api.expect_ok(reqwest::Method::GET, &path, None).await?;
        let text = tail.get("logs").and_then(Value::as_str).unwrap_or_default();
        // The log only grows; print what is new since the last read.
        let new = text.strip_prefix(printed.as_str()).unwrap_or(text);
        print!("{new}");
        printed = text.to_owned();
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        let status = api
            .expect_ok(
                reqwest::Method::GET,
                &format!("/task-runner/{task_id}"),
                None,
            )
            .await?;
        if status.get("done") == Some(&Value::Bool(true)) {
            let tail = api.expect_ok(reqwest::Method::GET, &path, None).await?;
            let text = tail.get("logs").and_then(Value::as_str).unwrap_or_default();
            print!("{}", text.strip_prefix(printed.as_str()).unwrap_or(""));
            return Ok(exit_code(&status));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
