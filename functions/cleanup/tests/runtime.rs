//! The `cleanup` binary under a Lambda Runtime API, its AWS side on moto.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use lambda_runtime::{Answer, invoke};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_runs_the_sweep() {
    let moto = moto::Moto::start();
    let event = json!({"version": "0", "id": "e-1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-30T10:15:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/taskrunner-cleanup"], "detail": {}});
    let invocation = invoke(env!("CARGO_BIN_EXE_cleanup"), &moto.env(), event).await;
    let Answer::Response(report) = invocation.answer else {
        panic!("{:?}\n{}", invocation.answer, invocation.output)
    };
    assert!(report["workers_terminated"].is_array(), "{report}");
    assert_eq!(report["executions_purged"], 0);
}
