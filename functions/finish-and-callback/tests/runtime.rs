//! The `finish-and-callback` binary under a Lambda Runtime API, CodeBuild on moto.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use lambda_runtime::{Answer, invoke};
use serde_json::{Value, json};

fn ended() -> Value {
    json!({"outcome": "failed", "exit_code": 2, "reason": null, "started_at": "2026-11-30T10:00:01Z", "finished_at": "2026-11-30T10:01:01Z"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_stops_the_build_and_reports_the_outcome() {
    let moto = moto::Moto::start();
    let build = moto.start_build();
    let event = json!({"task": events::task("lambda-finish", None), "run": events::run(&build, Some(ended()))});
    let invocation = invoke(
        env!("CARGO_BIN_EXE_finish-and-callback"),
        &moto.env(),
        event,
    )
    .await;
    let Answer::Response(output) = invocation.answer else {
        panic!("{:?}\n{}", invocation.answer, invocation.output)
    };
    assert_eq!(output["status"], "failed", "{output}");
    assert_eq!(output["exit_code"], 2);
    assert_eq!(output["success"], false);
    assert_eq!(output["duration_seconds"], 60.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_to_an_internal_address_is_a_named_error_not_retried() {
    let moto = moto::Moto::start();
    let build = moto.start_build();
    let task = events::task("lambda-refused", Some("http://169.254.169.254/latest"));
    let event = json!({"task": task, "run": events::run(&build, Some(ended()))});
    let invocation = invoke(
        env!("CARGO_BIN_EXE_finish-and-callback"),
        &moto.env(),
        event,
    )
    .await;
    let Answer::Error(error) = invocation.answer else {
        panic!("{:?}", invocation.answer)
    };
    assert_eq!(error["errorType"], "TaskRunner.CallbackRefused", "{error}");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap()
            .contains("169.254.169.254"),
        "{error}"
    );
}
