use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, router};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::embedded::{Embedded, EmbeddedOptions};
use crate::secret::Secret;

pub(super) const KEY: &str = "http-test-key";

struct Harness {
    _dir: tempfile::TempDir,
    router: axum::Router,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (_, router) = app(dir.path(), Config::default());
    Harness { _dir: dir, router }
}

/// The embedded stack over `dir` (nothing runs: no scheduler) and its router, which accepts
/// `KEY` and answers `status_url`s under `http://tr.test`.
pub(super) fn app(dir: &std::path::Path, config: Config) -> (Embedded, axum::Router) {
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
        public_url: Some("http://tr.test".into()),
    });
    (embedded, router(state))
}

async fn call(
    harness: &Harness,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    send(&harness.router, request.body(Body::from(body)).unwrap()).await
}

/// Sends one request through the router: the status and the body as JSON (null if not).
pub(super) async fn send(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub(super) fn valid() -> Value {
    json!({"task_id": "t-1", "task_file_name": "hello.py", "worker_config": {"worker_size": "Small"}})
}

#[tokio::test]
async fn submit_answers_202_with_and_without_the_trailing_slash() {
    let harness = harness();
    for (path, id) in [("/task-runner", "a"), ("/task-runner/", "b")] {
        let mut body = valid();
        body["task_id"] = json!(id);
        let (status, answer) = call(
            &harness,
            "POST",
            path,
            Some(KEY),
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["success"], true);
        assert_eq!(answer["task_id"], id);
        assert_eq!(
            answer["status_url"],
            format!("http://tr.test/task-runner/{id}")
        );
    }
    let (status, view) = call(&harness, "GET", "/task-runner/a", Some(KEY), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["status"], "starting");
    assert_eq!(view["worker_size"], "Small");
}

#[tokio::test]
async fn api_keys_are_required_and_checked() {
    let harness = harness();
    let body = valid().to_string().into_bytes();
    let (status, answer) = call(&harness, "POST", "/task-runner", None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("Authorization"),
        "{answer}"
    );
    let (status, answer) = call(&harness, "POST", "/task-runner", Some("nope"), body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["success"], false);
    let (status, _) = call(&harness, "GET", "/task-runner/a", Some("nope"), vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_requests_name_the_field_and_start_nothing() {
    let harness = harness();
    let (status, answer) = call(
        &harness,
        "POST",
        "/task-runner",
        Some(KEY),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let cases = [
        (
            json!({"task_id": "t", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "x y", "task_file_name": "a.py", "worker_config": {}}),
            "task_id",
        ),
        (
            json!({"task_id": "t", "task_file_name": "../x.py", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "t", "task_file_name": "/x.py", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_size": "Jumbo"}}),
            "worker_size",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_image": "x"}}),
            "worker_image",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {}, "callback_url": "http://10.0.0.1/cb"}),
            "callback_url",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = call(
            &harness,
            "POST",
            "/task-runner",
            Some(KEY),
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(field), "{message:?} should name {field}");
        let id = body["task_id"]
            .as_str()
            .unwrap_or("none")
            .replace(' ', "%20");
        let (status, _) = call(
            &harness,
            "GET",
            &format!("/task-runner/{id}"),
            Some(KEY),
            vec![],
        )
        .await;
        assert_ne!(status, StatusCode::OK, "nothing was started for {body}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let harness = harness();
    let mut body = valid();
    body["worker_config"]["startup_script"] = json!("x".repeat(2 * 1024 * 1024));
    let (status, answer) = call(
        &harness,
        "POST",
        "/task-runner",
        Some(KEY),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        answer["message"].as_str().unwrap().contains("limit"),
        "{answer}"
    );
}

#[tokio::test]
async fn same_id_other_body_is_409_and_unknown_ids_are_404() {
    let harness = harness();
    let body = valid().to_string().into_bytes();
    let (first, _) = call(&harness, "POST", "/task-runner", Some(KEY), body.clone()).await;
    let (again, answer) = call(&harness, "POST", "/task-runner", Some(KEY), body).await;
    assert_eq!((first, again), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("already accepted")
    );
    let mut other = valid();
    other["task_file_name"] = json!("other.py");
    let (status, answer) = call(
        &harness,
        "POST",
        "/task-runner",
        Some(KEY),
        other.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (status, answer) = call(&harness, "GET", "/task-runner/nobody", Some(KEY), vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["message"].as_str().unwrap().contains("nobody"));
}

#[tokio::test]
async fn a_repeated_or_conflicting_request_keeps_the_callback_token_of_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (embedded, router) = app(dir.path(), Config::default());
    let harness = Harness { _dir: dir, router };
    let mut first = valid();
    first["callback_url"] = json!("https://ci.example.com/hook");
    first["callback_url_token"] = json!("first-token");
    let mut other = first.clone();
    other["task_file_name"] = json!("other.py");
    other["callback_url_token"] = json!("other-token");
    let mut answers = Vec::new();
    for body in [&first, &first, &other] {
        let body = body.to_string().into_bytes();
        answers.push(
            call(&harness, "POST", "/task-runner", Some(KEY), body)
                .await
                .0,
        );
    }
    assert_eq!(
        answers,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::CONFLICT
        ]
    );
    let task_id = crate::task::TaskId::parse("t-1").unwrap();
    let kept = embedded
        .secrets
        .get(&crate::task::callback_token_secret_name(&task_id))
        .await
        .unwrap()
        .expect("the first request's token is kept");
    assert_eq!(kept.expose(), "first-token");
}

#[tokio::test]
async fn open_routes_need_no_key() {
    let harness = harness();
    let (status, health) = call(&harness, "GET", "/healthz", None, vec![]).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, sizes) = call(&harness, "GET", "/worker-sizes", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sizes["X-Small"]["memory_mib"], 1024);
    let (status, doc) = call(&harness, "GET", "/openapi.json", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/task-runner"]["post"].is_object());
    assert!(
        doc["components"]["schemas"]["TaskRunnerRequest"]["properties"]["worker_config"]
            .is_object(),
        "{}",
        doc["components"]["schemas"]
    );
    assert!(
        doc["components"]["schemas"]["CallbackBody"]["properties"]["logs_truncated"].is_object()
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["TaskRunnerRequest"]["properties"]["task_id"]["pattern"],
        crate::http::TASK_ID_PATTERN
    );
    for strict in [
        "TaskRunnerRequest",
        "WorkerConfig",
        "GitConfig",
        "CallbackBody",
    ] {
        assert_eq!(schemas[strict]["additionalProperties"], false, "{strict}");
    }
    let paths = &doc["paths"];
    for (path, method, code) in [
        ("/task-runner/{task_id}", "delete", "400"),
        ("/task-runner/{task_id}/logs", "get", "400"),
        ("/task-runner/{task_id}/history", "get", "400"),
        ("/sample-task-runner-callback", "post", "422"),
        ("/ui/login", "post", "303"),
        ("/task-runner", "get", "400"),
    ] {
        assert!(
            paths[path][method]["responses"][code].is_object(),
            "{method} {path} documents {code}"
        );
    }
}

#[tokio::test]
async fn the_sample_receiver_takes_the_callback_object_only() {
    let harness = harness();
    let callback = json!({"task_name": "a.py", "task_id": "t", "success": true, "logs": "x",
        "status": "succeeded", "exit_code": 0, "started_at": "2026-01-31T09:00:00Z",
        "finished_at": "2026-01-31T09:00:01Z", "duration_seconds": 1.0, "logs_truncated": false});
    let (status, answer) = call(
        &harness,
        "POST",
        "/sample-task-runner-callback",
        None,
        callback.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"success": true, "message": "ok"}));
    let mut extra = callback.clone();
    extra["surprise"] = json!(1);
    for (body, expected) in [
        (callback.to_string().to_string(), StatusCode::OK),
        (
            serde_json::to_string(&callback.to_string()).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"task_id": "t"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (extra.to_string(), StatusCode::UNPROCESSABLE_ENTITY),
        ("[null]".to_owned(), StatusCode::UNPROCESSABLE_ENTITY),
        ("not json".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = call(
            &harness,
            "POST",
            "/sample-task-runner-callback",
            None,
            body.clone().into_bytes(),
        )
        .await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
}

#[tokio::test]
async fn bad_ids_and_query_numbers_answer_json_400s_naming_the_field() {
    let harness = harness();
    let body = valid().to_string().into_bytes();
    let (accepted, _) = call(&harness, "POST", "/task-runner", Some(KEY), body).await;
    assert_eq!(accepted, StatusCode::ACCEPTED);
    for (method, path, field) in [
        ("GET", "/task-runner/t-1/logs?max_bytes=ten", "max_bytes"),
        ("GET", "/task-runner/t-1/logs?max_bytes=0", "max_bytes"),
        (
            "GET",
            "/task-runner/t-1/logs?max_bytes=99999999999",
            "max_bytes",
        ),
        (
            "GET",
            "/task-runner/t-1/logs?max_bytes=1&max_bytes=2",
            "max_bytes",
        ),
        ("GET", "/task-runner/t-1/history?after=-1", "after"),
        ("GET", "/task-runner/a,b", "task_id"),
        ("GET", "/task-runner/a,b/history", "task_id"),
        ("DELETE", "/task-runner/a,b", "task_id"),
        ("GET", "/task-runner/a,b/logs", "task_id"),
        ("GET", "/task-runner?since=", "since"),
    ] {
        let (status, answer) = call(&harness, method, path, Some(KEY), vec![]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{path}: {message}");
    }
    let (status, answer) = call(&harness, "GET", "/task-runner/%FF", Some(KEY), vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"].as_str().unwrap().contains("task_id"),
        "{answer}"
    );
    let (status, answer) = call(&harness, "PUT", "/task-runner/t-1", Some(KEY), vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        answer["message"].as_str().unwrap().contains("PUT"),
        "{answer}"
    );
}

#[tokio::test]
async fn history_after_n_gives_only_the_newer_events() {
    let harness = harness();
    let body = valid().to_string().into_bytes();
    let (accepted, _) = call(&harness, "POST", "/task-runner", Some(KEY), body).await;
    assert_eq!(accepted, StatusCode::ACCEPTED);
    let path = "/task-runner/t-1/history";
    let (_, all) = call(&harness, "GET", path, Some(KEY), vec![]).await;
    let all = all["events"].as_array().unwrap().clone();
    assert!(!all.is_empty());
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=all.len() as u64).collect::<Vec<_>>());
    let (status, newer) = call(
        &harness,
        "GET",
        &format!("{path}?after=1"),
        Some(KEY),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let newer = newer["events"].as_array().unwrap();
    assert!(newer.len() >= all.len() - 1);
    assert_eq!(newer[0]["id"], 2);
    assert_eq!(newer[0]["event_type"], all[1]["event_type"]);
    let (_, none) = call(
        &harness,
        "GET",
        &format!("{path}?after=100000"),
        Some(KEY),
        vec![],
    )
    .await;
    assert_eq!(none["events"], json!([]));
}

#[tokio::test]
async fn the_history_route_lists_the_tasks_events_and_404s_unknown_ids() {
    let harness = harness();
    let body = valid().to_string().into_bytes();
    let (accepted, _) = call(&harness, "POST", "/task-runner", Some(KEY), body).await;
    assert_eq!(accepted, StatusCode::ACCEPTED);
    let (status, answer) = call(
        &harness,
        "GET",
        "/task-runner/t-1/history",
        Some(KEY),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["task_id"], "t-1");
    assert_eq!(
        answer["events"][0]["event_type"], "ExecutionStarted",
        "{answer}"
    );
    let (status, _) = call(&harness, "GET", "/task-runner/t-1/history", None, vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = call(
        &harness,
        "GET",
        "/task-runner/nobody/history",
        Some(KEY),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["message"].as_str().unwrap().contains("nobody"));
}
