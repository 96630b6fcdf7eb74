//! The Lambda Invoke API over the real function binaries: one Runtime API per function, warm
//! processes reused between invocations, another process booted when every one is busy.
//! A function error is answered as Lambda answers it: HTTP 200 with `X-Amz-Function-Error`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Most processes one function runs at once.
const MAX_PROCESSES: usize = 4;
/// How long an invocation may take before it is answered as timed out.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a function answered.
#[derive(Debug)]
pub enum Answer {
    /// Its result.
    Response(Bytes),
    /// Its error document (`errorType`, `errorMessage`).
    Error(Bytes),
}

struct Job {
    event: Bytes,
    reply: oneshot::Sender<Answer>,
}

/// One function: its binary, its environment, its processes and their Runtime API.
pub struct Function {
    name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    runtime_api: String,
    jobs: mpsc::UnboundedSender<Job>,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// Processes neither busy nor promised to a queued invocation.
    free: Mutex<usize>,
    processes: Mutex<Vec<tokio::process::Child>>,
    next_id: AtomicU64,
}

impl Function {
    /// Serves a Runtime API for `binary` on loopback; no process starts before the first call.
    pub async fn start(
        name: &str,
        binary: PathBuf,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (jobs, queue) = mpsc::unbounded_channel();
        let function = Arc::new(Self {
            name: name.to_owned(),
            binary,
            env,
            log,
            runtime_api: listener.local_addr().unwrap().to_string(),
            jobs,
            queue: tokio::sync::Mutex::new(queue),
            pending: Mutex::new(HashMap::new()),
            free: Mutex::new(0),
            processes: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&function));
        tokio::spawn(async move { axum::serve(listener, app).await });
        function
    }

    /// Invokes the function with `event` and waits for its answer.
    pub async fn invoke(&self, event: Bytes) -> Answer {
        let spawn = {
            let mut free = self.free.lock().unwrap();
            if *free > 0 {
                *free -= 1;
                false
            } else {
                true
            }
        };
        if spawn {
            self.spawn();
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { event, reply }).unwrap();
        match tokio::time::timeout(INVOKE_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            _ => Answer::Error(Bytes::from(
                serde_json::json!({
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": format!("{} did not answer in {INVOKE_TIMEOUT:?}", self.name),
                })
                .to_string(),
            )),
        }
    }

    fn spawn(&self) {
        let mut processes = self.processes.lock().unwrap();
        if processes.len() >= MAX_PROCESSES {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_RUNTIME_API", &self.runtime_api)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("{}: {err}", self.binary.display()));
        processes.push(child);
    }

    /// Kills the function's processes.
    pub fn stop(&self) {
        for child in self.processes.lock().unwrap().iter_mut() {
            let _ = child.start_kill();
        }
    }

    /// Everything the function's processes wrote (their logs).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn answer(&self, id: &str, answer: Answer) -> StatusCode {
        let Some(reply) = self.pending.lock().unwrap().remove(id) else {
            return StatusCode::BAD_REQUEST;
        };
        *self.free.lock().unwrap() += 1;
        let _ = reply.send(answer);
        StatusCode::ACCEPTED
    }
}

async fn next(State(function): State<Arc<Function>>) -> Response {
    let job = function.queue.lock().await.recv().await;
    let Some(job) = job else {
        return StatusCode::GONE.into_response();
    };
    let id = format!(
        "{}-{}",
        function.name,
        function.next_id.fetch_add(1, Ordering::Relaxed)
    );
    function
        .pending
        .lock()
        .unwrap()
        .insert(id.clone(), job.reply);
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + INVOKE_TIMEOUT.as_millis();
    let arn = format!(
        "arn:aws:lambda:us-east-1:123456789012:function:{}",
        function.name
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_str(&arn).unwrap(),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, job.event).into_response()
}

async fn response(
    State(function): State<Arc<Function>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    function.answer(&id, Answer::Response(body))
}

async fn error(
    State(function): State<Arc<Function>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    function.answer(&id, Answer::Error(body))
}

async fn init_error(State(function): State<Arc<Function>>, body: Bytes) -> StatusCode {
    eprintln!(
        "{} failed to initialise: {}",
        function.name,
        String::from_utf8_lossy(&body)
    );
    StatusCode::ACCEPTED
}

/// The Invoke API's answer for `answer`.
pub fn invoke_response(answer: Answer) -> Response {
    match answer {
        Answer::Response(body) => ([("content-type", "application/json")], body).into_response(),
        Answer::Error(body) => (
            [
                ("content-type", "application/json"),
                ("x-amz-function-error", "Unhandled"),
            ],
            body,
        )
            .into_response(),
    }
}

/// The function name in an Invoke path segment: a name, or a (URL-encoded) function ARN.
pub fn function_name(segment: &str) -> String {
    let decoded = segment.replace("%3A", ":").replace("%3a", ":");
    let name = decoded
        .rsplit_once(":function:")
        .map_or(decoded.as_str(), |(_, rest)| rest);
    // A qualifier (`name:alias`) is not used by the deployment.
    name.split(':').next().unwrap_or(name).to_owned()
}

/// An invocation answered with the event's JSON, for tests that read it.
pub fn json(answer: &Answer) -> Value {
    let bytes = match answer {
        Answer::Response(bytes) | Answer::Error(bytes) => bytes,
    };
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}
