//! Bad input gets the same answer in AWS as in the embedded mode: every request of the embedded
//! HTTP tests' 4xx table goes to the embedded router in process and to the `api` binary under a
//! Lambda Runtime API (its AWS side on moto), and both must give the same status and message.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use lambda_runtime::{http_response, invoke};
use serde_json::{Value, json};
use taskrunner::clock::SystemClock;
use taskrunner::config::Config;
use taskrunner::embedded::{Embedded, EmbeddedOptions};
use taskrunner::http::{AppState, router};
use taskrunner::secret::Secret;
use tower::ServiceExt;

const BIN: &str = env!("CARGO_BIN_EXE_api");
/// The key `moto::Moto::env` gives the function.
const KEY: &str = "lambda-test-key";

/// One request of the table.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    key: Option<&'static str>,
    body: Option<String>,
}

fn case(what: &'static str, method: &'static str, path: &'static str, body: Value) -> Case {
    Case {
        what,
        method,
        path,
        key: Some(KEY),
        body: Some(body.to_string()),
    }
}

fn get(what: &'static str, path: &'static str, key: Option<&'static str>) -> Case {
    Case {
        what,
        method: "GET",
        path,
        key,
        body: None,
    }
}

fn valid() -> Value {
    json!({"task_id": "t-1", "task_file_name": "hello.py",
        "worker_config": {"worker_size": "Small", "git_configs": [{"remote_url": "https://git.example.com/org/repo.git"}]}})
}

/// The embedded tests' 4xx table, plus the 409 after a first submit.
fn table() -> Vec<Case> {
    let mut oversized = valid();
    oversized["worker_config"]["startup_script"] = json!("x".repeat(2 * 1024 * 1024));
    let mut other = valid();
    other["task_file_name"] = json!("other.py");
    let no_file = json!({"task_id": "t", "worker_config": {}});
    let bad_id = json!({"task_id": "x y", "task_file_name": "a.py", "worker_config": {}});
    let dotdot = json!({"task_id": "t", "task_file_name": "../x.py", "worker_config": {}});
    let absolute = json!({"task_id": "t", "task_file_name": "/x.py", "worker_config": {}});
    let size = json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_size": "Jumbo"}});
    let image =
        json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_image": "x"}});
    let private = json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {}, "callback_url": "http://10.0.0.1/cb"});
    vec![
        Case {
            body: Some("{not json".into()),
            ..case("body not JSON", "POST", "/task-runner", Value::Null)
        },
        case("no task_file_name", "POST", "/task-runner", no_file),
        case("task_id with a space", "POST", "/task-runner", bad_id),
        case("task_file_name with ..", "POST", "/task-runner", dotdot),
        case("absolute task_file_name", "POST", "/task-runner/", absolute),
        case("unknown worker_size", "POST", "/task-runner", size),
        case("worker_image", "POST", "/task-runner", image),
        case("private callback_url", "POST", "/task-runner", private),
        case("body over the limit", "POST", "/task-runner", oversized),
        case("first submit", "POST", "/task-runner", valid()),
        case("same id, other body", "POST", "/task-runner", other),
        get("unknown task", "/task-runner/nobody", Some(KEY)),
        get("unknown task's logs", "/task-runner/nobody/logs", Some(KEY)),
        Case {
            method: "DELETE",
            ..get(
                "cancel of an unknown task",
                "/task-runner/nobody",
                Some(KEY),
            )
        },
        get("no API key", "/task-runner/t-1", None),
        get("wrong API key", "/task-runner/t-1", Some("not-the-key")),
        get("unknown route", "/no-such-route", None),
    ]
}

/// The embedded router, configured as the template configures the functions.
fn embedded(dir: &std::path::Path) -> (Embedded, axum::Router) {
    let mut config = Config::default();
    config.callback.allow_loopback = false;
    let embedded = Embedded::open(EmbeddedOptions {
        data_dir: dir.join("data"),
        config,
        supervisor_program: "/bin/false".into(),
        base_dir: dir.to_owned(),
        clock: Arc::new(SystemClock),
    })
    .unwrap();
    let state = Arc::new(AppState {
        api_keys: embedded.api_keys(Some(Secret::new(KEY))),
        service: embedded.service.clone(),
        public_url: None,
    });
    (embedded, router(state))
}

async fn embedded_answer(router: &axum::Router, case: &Case) -> (u64, Value) {
    let mut request = Request::builder()
        .method(case.method)
        .uri(case.path)
        .header("content-type", "application/json");
    if let Some(key) = case.key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let body = case
        .body
        .clone()
        .map(Body::from)
        .unwrap_or_else(Body::empty);
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = u64::from(response.status().as_u16());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn aws_answer(moto: &moto::Moto, case: &Case) -> (u64, Value) {
    let event =
        events::default_route_request(case.method, case.path, case.key, case.body.as_deref());
    http_response(invoke(BIN, &moto.env(), event).await.answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_same_status_and_message_in_aws_as_embedded() {
    let moto = moto::Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (_embedded, router) = embedded(dir.path());
    let mut differences = Vec::new();
    for case in table() {
        let (embedded_status, embedded_body) = embedded_answer(&router, &case).await;
        let (aws_status, aws_body) = aws_answer(&moto, &case).await;
        if case.what == "first submit" {
            assert_eq!((embedded_status, aws_status), (202, 202), "{aws_body}");
            continue;
        }
        assert!(
            (400..500).contains(&embedded_status)
                && embedded_body["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
            "{}: embedded answered {embedded_status} {embedded_body}",
            case.what
        );
        let embedded = (embedded_status, &embedded_body["message"]);
        let aws = (aws_status, &aws_body["message"]);
        if embedded != aws || aws_body["success"] != false {
            differences.push(format!("{}: embedded {embedded:?}, AWS {aws:?}", case.what));
        }
    }
    assert!(differences.is_empty(), "{differences:#?}");
}
