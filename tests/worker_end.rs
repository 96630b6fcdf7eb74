//! The wait for the worker's end, through the embedded mode (a real `taskrunner serve`):
//! the worker's exit resumes the execution at once, a lost end is caught by the safety
//! net, and a cancel ends the wait with the `cancelled` callback.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::receiver::Receiver;
use support::server::Server;
use support::{eventually, write_tasks};

const WAIT: Duration = Duration::from_secs(60);

fn request(task_id: &str, task_file: &str, callback: &Receiver) -> Value {
    json!({
        "task_id": task_id,
        "task_file_name": task_file,
        "worker_config": {"worker_size": "X-Small", "env_variables": {"SLEEP_SECONDS": 2}},
        "callback_url": callback.url,
    })
}

async fn callback(receiver: &Receiver, task_id: &str) -> Value {
    receiver.callbacks_for(task_id, 1, WAIT).await[0].json()
}

/// The states the task's history shows entered, in order.
async fn states_entered(server: &Server, task_id: &str) -> Vec<String> {
    server.history(task_id).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"].as_str().unwrap().ends_with("StateEntered"))
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_exit_resumes_the_wait_without_a_poll() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    // The default safety net is 30 minutes: only the exit can end these waits in time.
    let server = Server::start(&tmp.path().join("data"), &tmp.path().join("tasks"), &[]);
    for (task_id, file) in [("quick", "ok.sh"), ("sleepy", "sleep.sh")] {
        let (status, answer) = server.submit(&request(task_id, file, &receiver)).await;
        assert_eq!(status, 202, "{answer}");
    }
    for task_id in ["quick", "sleepy"] {
        let body = callback(&receiver, task_id).await;
        assert_eq!(body["status"], "succeeded", "{body}");
        let states = states_entered(&server, task_id).await;
        assert!(states.contains(&"WaitForWorker".to_owned()), "{states:?}");
        assert!(!states.contains(&"PollWorker".to_owned()), "{states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_that_resumes_nothing_is_caught_by_the_safety_net() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let data = tmp.path().join("data");
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(
        &data,
        &tmp.path().join("tasks"),
        &[
            ("TASKRUNNER_POLL_SAFETY_SECONDS", "5"),
            ("TASKRUNNER_POLL_SAFETY_MAX_SECONDS", "5"),
        ],
    );
    let (status, answer) = server
        .submit(&request("unheard", "sleep.sh", &receiver))
        .await;
    assert_eq!(status, 202, "{answer}");
    // The end is lost: the kept token is replaced by one no wait has, so the worker's exit
    // resumes nothing.
    let records_db = data.join("worker.db");
    eventually(WAIT, "the worker records", async || {
        records_db.exists().then_some(())
    })
    .await;
    let records = rusqlite::Connection::open(&records_db).unwrap();
    records.busy_timeout(Duration::from_secs(10)).unwrap();
    let kept = || {
        records
            .query_row(
                "SELECT count(*) FROM tokens WHERE task_id = 'unheard'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap_or(0)
            > 0
    };
    eventually(WAIT, "the wait to be armed", async || kept().then_some(())).await;
    records
        .execute(
            "UPDATE tokens SET token = 'a-token-no-wait-has' WHERE task_id = 'unheard'",
            [],
        )
        .unwrap();

    let body = callback(&receiver, "unheard").await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert!(body["logs"].as_str().unwrap().contains("slept"), "{body}");
    let states = states_entered(&server, "unheard").await;
    assert_eq!(
        states.iter().filter(|state| *state == "PollWorker").count(),
        1,
        "one safety-net poll found the end: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_waiting_ends_the_wait_with_the_cancelled_callback() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    // One task at a time, and a queued task looks at the line only every minute: only the
    // cancel can end the second task's wait in time.
    let server = Server::start(
        &tmp.path().join("data"),
        &tmp.path().join("tasks"),
        &[
            ("TASKRUNNER_MAX_CONCURRENT_WORKERS", "1"),
            ("TASKRUNNER_POLL_MIN_SECONDS", "60"),
            ("TASKRUNNER_POLL_MAX_SECONDS", "300"),
        ],
    );
    for task_id in ["holder", "queued"] {
        let mut body = request(task_id, "sleep.sh", &receiver);
        body["worker_config"]["env_variables"]["SLEEP_SECONDS"] = json!(300);
        let (status, answer) = server.submit(&body).await;
        assert_eq!(status, 202, "{answer}");
    }
    eventually(WAIT, "the first task to run", async || {
        (server.status("holder").await["status"] == "running").then_some(())
    })
    .await;
    eventually(WAIT, "the second task to wait in line", async || {
        (server.status("queued").await["status"] == "queued").then_some(())
    })
    .await;

    // In line, no worker runs: the cancel itself ends the wait (TaskRunner.Cancelled).
    let (code, answer) = server
        .call(reqwest::Method::DELETE, "/task-runner/queued", None)
        .await;
    assert_eq!(code, 200, "{answer}");
    let body = callback(&receiver, "queued").await;
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["success"], false, "{body}");
    let history = server.history("queued").await.to_string();
    assert!(history.contains("TaskRunner.Cancelled"), "{history}");
    assert!(!history.contains("\"PollWorker\""), "{history}");

    // Running: its worker is stopped and the wait ends with the cancelled callback too.
    let (code, answer) = server
        .call(reqwest::Method::DELETE, "/task-runner/holder", None)
        .await;
    assert_eq!(code, 200, "{answer}");
    let body = callback(&receiver, "holder").await;
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(server.status("holder").await["status"], "cancelled");
    assert_eq!(server.status("queued").await["status"], "cancelled");
}
