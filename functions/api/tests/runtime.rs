//! The `api` binary under a Lambda Runtime API, its AWS side on moto.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use lambda_runtime::{http_response as response, invoke};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_api");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_through_api_gateway_is_accepted_and_started_on_step_functions() {
    let moto = moto::Moto::start();
    let body = json!({"task_id": "lambda-1", "task_file_name": "job.sh",
        "worker_config": {"worker_size": "Small", "git_configs": [{"remote_url": "https://git.example.com/org/repo.git"}]},
        "callback_url": "https://ci.example.com/cb"}).to_string();
    let event = events::http_request("POST", "/task-runner", Some("lambda-test-key"), Some(&body));
    let invocation = invoke(BIN, &moto.env(), event.clone()).await;
    let (status, answer) = response(invocation.answer);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["task_id"], "lambda-1");
    assert_eq!(
        answer["status_url"],
        "https://abc123.execute-api.us-east-1.amazonaws.com/task-runner/lambda-1"
    );

    // The same request again finds the execution it started: idempotent.
    let (again, answer) = response(invoke(BIN, &moto.env(), event).await.answer);
    assert_eq!(again, 202, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("already accepted"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_missing_keys_are_refused_with_the_reason() {
    let moto = moto::Moto::start();
    let bad = json!({"task_id": "x", "task_file_name": "../x.py", "worker_config": {}}).to_string();
    let (status, answer) = response(
        invoke(
            BIN,
            &moto.env(),
            events::http_request("POST", "/task-runner", Some("lambda-test-key"), Some(&bad)),
        )
        .await
        .answer,
    );
    assert_eq!(status, 422);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("task_file_name"),
        "{answer}"
    );

    let local = json!({"task_id": "x", "task_file_name": "a.sh", "worker_config": {"git_configs": [{"remote_url": "/srv/repo"}]}}).to_string();
    let (status, answer) = response(
        invoke(
            BIN,
            &moto.env(),
            events::http_request(
                "POST",
                "/task-runner",
                Some("lambda-test-key"),
                Some(&local),
            ),
        )
        .await
        .answer,
    );
    assert_eq!(
        status, 422,
        "local repositories are an embedded-mode feature: {answer}"
    );

    let (status, _) = response(
        invoke(
            BIN,
            &moto.env(),
            events::http_request("GET", "/task-runner/x", None, None),
        )
        .await
        .answer,
    );
    assert_eq!(status, 401);
}
