//! The `submit` binary under a Lambda Runtime API, CodeBuild on moto.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use lambda_runtime::{Answer, invoke};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_starts_a_codebuild_worker() {
    let moto = moto::Moto::start();
    let event = json!({"task": events::task("lambda-submit", None)});
    let invocation = invoke(env!("CARGO_BIN_EXE_submit"), &moto.env(), event).await;
    let Answer::Response(run) = invocation.answer else {
        panic!("{:?}\n{}", invocation.answer, invocation.output)
    };
    assert_eq!(run["worker"]["backend"], "codebuild", "{run}");
    assert!(
        run["worker"]["id"]
            .as_str()
            .unwrap()
            .contains("taskrunner-workers"),
        "{run}"
    );
    assert_eq!(run["done"], false);
    assert_eq!(run["wait_seconds"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_it_cannot_run_is_a_named_error_the_state_machine_catches() {
    let moto = moto::Moto::start();
    let mut task = events::task("lambda-gpu", None);
    task["worker"]["name"] = json!("GPU");
    let invocation = invoke(
        env!("CARGO_BIN_EXE_submit"),
        &moto.env(),
        json!({"task": task}),
    )
    .await;
    let Answer::Error(error) = invocation.answer else {
        panic!("{:?}", invocation.answer)
    };
    assert_eq!(error["errorType"], "TaskRunner.StartFailed", "{error}");
    let garbage = invoke(
        env!("CARGO_BIN_EXE_submit"),
        &moto.env(),
        json!({"nope": 1}),
    )
    .await;
    let Answer::Error(error) = garbage.answer else {
        panic!("{:?}", garbage.answer)
    };
    assert_eq!(error["errorType"], "TaskRunner.BadInput", "{error}");
}
