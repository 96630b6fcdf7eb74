//! `taskrunner serve` as a child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::taskrunner_bin;

/// The API key the test servers accept.
pub const API_KEY: &str = "test-api-key-0123";

/// A running `taskrunner serve`.
pub struct Server {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// File receiving its stderr (its logs).
    pub log_file: PathBuf,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server on a free loopback port over `data_dir`, with `tasks_dir`.
    pub fn start(data_dir: &Path, tasks_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, tasks_dir, env, "127.0.0.1:0")
    }

    /// Starts a server listening on `listen`.
    pub fn start_on(data_dir: &Path, tasks_dir: &Path, env: &[(&str, &str)], listen: &str) -> Self {
        std::fs::create_dir_all(data_dir).unwrap();
        let log_file = data_dir.with_extension(format!("serve-{}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .unwrap();
        let mut command = Command::new(taskrunner_bin());
        command
            .args(["serve", "--listen", listen, "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tasks-dir")
            .arg(tasks_dir)
            .env("TASKRUNNER_API_KEY", API_KEY)
            .env("RUST_LOG", "debug")
            .env_remove("TASKRUNNER_MASTER_KEY")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start taskrunner serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("taskrunner listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "serve did not start: {line:?}; its log: {}",
                    std::fs::read_to_string(&log_file).unwrap_or_default()
                )
            })
            .to_owned();
        Self {
            child,
            url,
            data_dir: data_dir.to_owned(),
            log_file,
            http: reqwest::Client::new(),
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit, for at most `within`; `None` if
    /// it is still running then.
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for serve") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// What the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Sends a request with the API key; returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request to serve");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /task-runner`.
    pub async fn submit(&self, body: &Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/task-runner",
            Some(body.to_string()),
        )
        .await
    }

    /// `GET /task-runner/{id}`.
    pub async fn status(&self, task_id: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/task-runner/{task_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /task-runner/{id}/history`.
    pub async fn history(&self, task_id: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/task-runner/{task_id}/history"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
