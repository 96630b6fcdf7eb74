//! The `poll-worker` binary under a Lambda Runtime API, CodeBuild on moto.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use lambda_runtime::{Answer, invoke};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_reads_the_build_and_schedules_the_next_wait() {
    let moto = moto::Moto::start();
    let build = moto.start_build();
    let event =
        json!({"task": events::task("lambda-poll", None), "run": events::run(&build, None)});
    let invocation = invoke(env!("CARGO_BIN_EXE_poll-worker"), &moto.env(), event).await;
    let Answer::Response(run) = invocation.answer else {
        panic!("{:?}\n{}", invocation.answer, invocation.output)
    };
    assert_eq!(run["worker"]["id"], build.as_str());
    assert_eq!(run["polls"], 2, "{run}");
    assert!(run["phase"].is_string());
    if run["done"] == false {
        assert!(run["wait_seconds"].as_u64().unwrap() >= 5, "{run}");
    }
}
