//! A Lambda Runtime API on loopback: boots a function binary the way Lambda does, hands it
//! one event, and returns its answer (or its error, with the `errorType` the state machine
//! matches on).

// Shared by several test crates; each uses a part of it.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::Notify;

/// What the function answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `POST .../response`.
    Response(Value),
    /// `POST .../error` (or `init/error`): the error document.
    Error(Value),
}

/// One invocation's figures and answer.
#[derive(Debug)]
pub struct Invocation {
    /// The answer.
    pub answer: Answer,
    /// From spawning the binary to its first `GET /next`.
    pub cold_start: Duration,
    /// Peak resident memory of the process, KiB (VmHWM), read before it is stopped.
    pub peak_rss_kib: Option<u64>,
    /// What the function wrote on stderr/stdout (its logs).
    pub output: String,
}

/// An `api` function's HTTP answer: the status code and the body as JSON (null if not JSON).
pub fn http_response(answer: Answer) -> (u64, Value) {
    let Answer::Response(response) = answer else {
        panic!("an error answer: {answer:?}")
    };
    let body = response["body"].as_str().unwrap_or("null");
    (
        response["statusCode"].as_u64().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[derive(Default)]
struct Inner {
    event: Option<Value>,
    first_next: Option<Instant>,
    answer: Option<Answer>,
}

struct Shared {
    inner: Mutex<Inner>,
    answered: Notify,
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let event = {
        let mut inner = shared.inner.lock().unwrap();
        inner.first_next.get_or_insert_with(Instant::now);
        inner.event.take()
    };
    let Some(event) = event else {
        // Only one event per boot: hold the next poll until the test stops the process.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_static("req-1"),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:test"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, event.to_string()).into_response()
}

async fn answer(State(shared): State<Arc<Shared>>, kind: Answer) -> StatusCode {
    shared.inner.lock().unwrap().answer = Some(kind);
    shared.answered.notify_waiters();
    StatusCode::ACCEPTED
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    answer(State(shared), Answer::Response(value)).await
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    answer(State(shared), Answer::Error(value)).await
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    answer(State(shared), Answer::Error(value)).await
}

/// Boots `binary` with only the Lambda variables (plus `env`), hands it `event`, returns its answer.
pub async fn invoke(binary: &str, env: &[(&str, String)], event: Value) -> Invocation {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            event: Some(event),
            ..Inner::default()
        }),
        answered: Notify::new(),
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let log = tempfile::NamedTempFile::new().unwrap();
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_FUNCTION_NAME", "test")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let spawned = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("{binary}: {err}"));
    let waited = async {
        loop {
            let notified = shared.answered.notified();
            if shared.inner.lock().unwrap().answer.is_some() {
                return;
            }
            notified.await;
        }
    };
    let finished = tokio::select! {
        () = waited => true,
        status = child.wait() => { let _ = status; false },
        () = tokio::time::sleep(Duration::from_secs(60)) => false,
    };
    let peak_rss_kib = child.id().and_then(peak_rss);
    let _ = child.kill().await;
    server.abort();
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    let inner = shared.inner.lock().unwrap();
    let answer = match (&inner.answer, finished) {
        (Some(answer), _) => answer.clone(),
        (None, _) => panic!("{binary} gave no answer; its output:\n{output}"),
    };
    Invocation {
        answer,
        cold_start: inner.first_next.map(|at| at - spawned).unwrap_or_default(),
        peak_rss_kib,
        output,
    }
}

fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}
