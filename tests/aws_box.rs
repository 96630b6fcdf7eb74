//! The whole AWS path on this machine: the original client's request through an API Gateway
//! v2 event to the real `api` binary, the real state machine executed by moto's Step
//! Functions interpreter, whose Task states invoke the real `submit`, `poll-worker` and
//! `finish-and-callback` binaries, a CodeBuild stand-in running the real runner buildspec
//! (clone with the token from Secrets Manager, run the task, logs to CloudWatch Logs), and
//! the callback at a receiver. Waits are moto's real time: the test prints how long it took.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::aws_box::{API_KEY, AwsBox};
use support::git_server::{GitServer, create_repository};
use support::receiver::Receiver;

/// The git token, also the canary that must never show up outside the worker's environment.
const CANARY: &str = "canary-gh-token-93f1c2";
/// The original client's repository (README: "A request exactly as the original app's clients send it").
const ORIGIN: &str = "https://github.com/your-org/";
/// Long enough for moto's real-time waits, a clone and a poll cycle on two busy cores.
const TASK_TIMEOUT: Duration = Duration::from_secs(150);

/// One scene at a time: each runs a moto, six functions and its builds. With both scenes at
/// once, the main scenario's first task was repeatedly found by a safety-net poll instead of
/// by its worker's event; one after the other, each scene sees only its own timing.
static ONE_SCENE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Scene {
    aws: AwsBox,
    receiver: Receiver,
    http: reqwest::Client,
    _git_root: tempfile::TempDir,
}

impl Scene {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A scene whose functions get `settings` on top of the box's own.
    async fn start_with(settings: &[(&str, &str)]) -> Self {
        let git_root = tempfile::tempdir().unwrap();
        create_repository(
            git_root.path(),
            "your-model-repo",
            &[
                (
                    "deployer_task.py",
                    "import os\nprint('deploying', os.environ['MODEL_NAME'], 'from', os.environ['PREFIX'])\n\
                     print('git secret reached the task:', len(os.environ.get('MY_GIT_SECRET', '')) > 0)\n",
                ),
                (
                    "fail.sh",
                    "echo 'about to fail'\necho 'bad things' >&2\nexit 3\n",
                ),
                ("sleep.sh", "echo started\nsleep 300\necho slept\n"),
            ],
        );
        let git = GitServer::start(git_root.path(), CANARY).await;
        // The workers' network: github.com/your-org is this machine's git server.
        let gitconfig = format!("[url \"{}/\"]\n\tinsteadOf = {ORIGIN}\n", git.url);
        let binaries = Path::new(env!("CARGO_BIN_EXE_taskrunner"))
            .parent()
            .unwrap();
        let mut env = vec![
            ("TASKRUNNER_POLL_MIN_SECONDS", "2"),
            ("TASKRUNNER_KEEP_WORKSPACE_SECONDS", "3"),
        ];
        env.extend_from_slice(settings);
        let aws = AwsBox::start(binaries, &gitconfig, &env).await;
        aws.create_secret("MY_GIT_SECRET", CANARY).await;
        aws.put_task(
            "ci/track.sh",
            "echo \"start $TASKRUNNER_TASK_ID $(date +%s%N)\" >> \"$TRACK_FILE\"\nsleep 1\n\
             echo \"end $TASKRUNNER_TASK_ID $(date +%s%N)\" >> \"$TRACK_FILE\"\n",
        )
        .await;
        aws.put_task("ci/hold.sh", "echo holding\nsleep 300\n")
            .await;
        aws.put_task(
            "ci/report.sh",
            "echo \"report from the tasks directory, in $(basename \"$PWD\")\"\n",
        )
        .await;
        // A chained task: the parent starts its child with the CLI the deployment ships.
        aws.put_task(
            "chain-parent.sh",
            "set -e\ndir=\"$(mktemp -d)\"\n\
             echo '{\"task_id\": \"step\", \"task_file_name\": \"chain-child.sh\", \"worker_config\": {\"worker_size\": \"Small\"}}' > \"$dir/step.json\"\n\
             echo \"taskrunner is $(command -v taskrunner)\"\n\
             taskrunner submit \"$dir/step.json\" --wait > \"$dir/result.json\"\n\
             echo \"child result: $(cat \"$dir/result.json\")\"\n",
        )
        .await;
        aws.put_task("chain-child.sh", "echo 'the child step ran'\n")
            .await;
        // What ships is a launcher for the CLI this test built (the debug binary is 140 MB).
        aws.put_cli(&format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_taskrunner")
        ))
        .await;
        Self {
            aws,
            receiver: Receiver::start(vec![]).await,
            http: reqwest::Client::new(),
            _git_root: git_root,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.aws.api_url),
            )
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn callback(&self, task_id: &str) -> Value {
        support::eventually(
            TASK_TIMEOUT,
            &format!("the callback of {task_id}"),
            async || {
                self.receiver
                    .received()
                    .iter()
                    .map(|r| r.json())
                    .find(|body| body["task_id"] == task_id)
            },
        )
        .await
    }

    async fn status_is(&self, task_id: &str, wanted: &str) {
        support::eventually(TASK_TIMEOUT, &format!("{task_id} {wanted}"), async || {
            let (_, status) = self
                .call("GET", &format!("/task-runner/{task_id}"), None)
                .await;
            (status["status"] == wanted).then_some(())
        })
        .await;
    }
}

fn request(task_id: &str, task_file: &str, callback_url: &str) -> Value {
    json!({
        "task_id": task_id,
        "task_file_name": task_file,
        "worker_config": {
            "worker_size": "X-Small",
            "git_configs": [{"remote_url": format!("{ORIGIN}your-model-repo.git"), "secret_name": "MY_GIT_SECRET"}]
        },
        "callback_url": callback_url,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aws_deployment_runs_the_original_clients_request_end_to_end() {
    let _alone = ONE_SCENE.lock().await;
    let started = Instant::now();
    let scene = Scene::start().await;
    let callback_url = scene.receiver.url.clone();

    // The original notebook's exact body, with the callback pointed at this machine.
    let mut original: Value =
        serde_json::from_str(include_str!("../examples/original-client.json")).unwrap();
    original["callback_url"] = json!(callback_url);
    // Submitted in one burst with the others: the submit instances that start them create the
    // task-token key at once on this fresh deployment, and the chained task's token must
    // still be one the api function accepts.
    let chained = json!({"task_id": "box-chain-1", "task_file_name": "chain-parent.sh",
        "worker_config": {"worker_size": "Small"}, "callback_url": callback_url});
    let (status, answer) = scene.call("POST", "/task-runner", Some(&chained)).await;
    assert_eq!(status, 202, "{answer}");

    let (status, answer) = scene.call("POST", "/task-runner/", Some(&original)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["task_id"], "model-deployment-task-1", "{answer}");

    let failing = request("box-fail-1", "fail.sh", &callback_url);
    let (status, answer) = scene.call("POST", "/task-runner", Some(&failing)).await;
    assert_eq!(status, 202, "{answer}");
    // No git_configs: the task file comes from the deployment's tasks directory (S3).
    let from_tasks = json!({"task_id": "box-tasks-dir-1", "task_file_name": "ci/report.sh",
        "worker_config": {"worker_size": "Small"}, "callback_url": callback_url});
    let (status, answer) = scene.call("POST", "/task-runner", Some(&from_tasks)).await;
    assert_eq!(status, 202, "{answer}");
    let missing = request("box-missing-1", "ci/absent.sh", &callback_url);
    let (status, answer) = scene.call("POST", "/task-runner", Some(&missing)).await;
    assert_eq!(status, 202, "{answer}");
    // Three tasks under one concurrency_key (limit 1): queued, never refused, one at a time.
    let track = tempfile::NamedTempFile::new().unwrap();
    let keyed: Vec<String> = (1..=3).map(|i| format!("box-key-{i}")).collect();
    for task_id in &keyed {
        let body = json!({"task_id": task_id, "task_file_name": "ci/track.sh", "concurrency_key": "deploy-prod",
            "worker_config": {"worker_size": "Small", "env_variables": {"TRACK_FILE": track.path()}},
            "callback_url": callback_url});
        let (status, answer) = scene.call("POST", "/task-runner", Some(&body)).await;
        assert_eq!(status, 202, "{answer}");
    }
    // A lost execution (stopped in Step Functions, so FinishAndCallback never ran) keeps its
    // slot until the cleanup sweep frees it; the task behind it waits, then runs.
    let lost = |task_id: &str, file: &str| {
        json!({"task_id": task_id, "task_file_name": file, "concurrency_key": "nightly",
               "worker_config": {"worker_size": "Small"}, "callback_url": callback_url})
    };
    let (status, answer) = scene
        .call(
            "POST",
            "/task-runner",
            Some(&lost("box-lost-1", "ci/hold.sh")),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    scene.status_is("box-lost-1", "running").await;
    let (status, answer) = scene
        .call(
            "POST",
            "/task-runner",
            Some(&lost("box-after-lost-1", "ci/report.sh")),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    scene.aws.stop_execution("box-lost-1").await;
    scene.status_is("box-after-lost-1", "queued").await;

    let cancelled = request("box-cancel-1", "sleep.sh", &callback_url);
    let (status, answer) = scene.call("POST", "/task-runner", Some(&cancelled)).await;
    assert_eq!(status, 202, "{answer}");

    scene.status_is("box-cancel-1", "running").await;
    support::eventually(TASK_TIMEOUT, "box-cancel-1's first line", async || {
        let (_, tail) = scene
            .call("GET", "/task-runner/box-cancel-1/logs", None)
            .await;
        tail.to_string().contains("started").then_some(())
    })
    .await;
    let (status, answer) = scene
        .call("DELETE", "/task-runner/box-cancel-1", None)
        .await;
    assert_eq!(status, 200, "{answer}");

    let ok = scene.callback("model-deployment-task-1").await;
    assert_eq!(ok["success"], true, "{ok}");
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(ok["task_name"], "deployer_task.py", "{ok}");
    let logs = ok["logs"].as_str().unwrap();
    assert!(
        logs.contains("deploying sample-model from models"),
        "{logs}"
    );
    assert!(logs.contains("git secret reached the task: True"), "{logs}");

    let failed = scene.callback("box-fail-1").await;
    assert_eq!(failed["success"], false, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert!(
        failed["logs"].as_str().unwrap().contains("about to fail"),
        "{failed}"
    );

    let stopped = scene.callback("box-cancel-1").await;
    assert_eq!(stopped["success"], false, "{stopped}");
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(
        stopped["logs"].as_str().unwrap().contains("started"),
        "{stopped}"
    );

    let report = scene.callback("box-tasks-dir-1").await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert!(
        report["logs"]
            .as_str()
            .unwrap()
            .contains("report from the tasks directory, in tasks"),
        "{report}"
    );
    // In neither place: the embedded worker's message, naming both.
    let absent = scene.callback("box-missing-1").await;
    assert_eq!(absent["status"], "error", "{absent}");
    let (_, state) = scene.call("GET", "/task-runner/box-missing-1", None).await;
    let reason = state["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("task file \"ci/absent.sh\" not found: looked in the tasks directory (")
            && reason.contains("and in the checkout of git_configs[0] ("),
        "{state}"
    );

    let swept = scene
        .aws
        .invoke("cleanup", support::aws_box::scheduled_event())
        .await;
    assert!(
        swept["places_released"].to_string().contains("box-lost-1"),
        "{swept}"
    );
    let after = scene.callback("box-after-lost-1").await;
    assert_eq!(after["status"], "succeeded", "{after}");

    for task_id in &keyed {
        let done = scene.callback(task_id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let mut marks: Vec<(u128, String, String)> = std::fs::read_to_string(track.path())
        .unwrap()
        .lines()
        .map(|line| {
            let mut words = line.split(' ');
            let (what, task, at) = (words.next(), words.next(), words.next());
            (
                at.unwrap().parse().unwrap(),
                what.unwrap().to_owned(),
                task.unwrap().to_owned(),
            )
        })
        .collect();
    marks.sort();
    assert_eq!(marks.len(), 6, "{marks:?}");
    for pair in marks.chunks(2) {
        // Each start is followed by the end of the same task: no two ran at once.
        assert_eq!(
            (pair[0].1.as_str(), pair[1].1.as_str()),
            ("start", "end"),
            "{marks:?}"
        );
        assert_eq!(pair[0].2, pair[1].2, "{marks:?}");
    }

    // The parent found the shipped CLI on its PATH, started its child with its task token,
    // waited for it, and its callback names the child.
    let parent = scene.callback("box-chain-1").await;
    assert_eq!(parent["status"], "succeeded", "{parent}");
    let logs = parent["logs"].as_str().unwrap();
    assert!(logs.contains("taskrunner is /"), "{logs}");
    assert!(
        logs.contains("\"task_id\": \"box-chain-1.step\"")
            && logs.contains("\"status\": \"succeeded\""),
        "{logs}"
    );
    assert_eq!(
        parent["children"],
        json!([{"task_id": "box-chain-1.step", "status": "succeeded"}]),
        "{parent}"
    );
    let (_, tail) = scene
        .call("GET", "/task-runner/box-chain-1.step/logs", None)
        .await;
    assert!(tail.to_string().contains("the child step ran"), "{tail}");

    // The real definition ran: submit, one wait that the worker's end (its CodeBuild event)
    // resumed, no safety-net poll, then the callback step.
    let states = scene.aws.states_entered("model-deployment-task-1").await;
    assert_eq!(
        states,
        [
            "Submit",
            "WaitForWorker",
            "IsTaskDone",
            "FinishAndCallback",
            "Done"
        ],
        "{states:?}"
    );

    let (status, state) = scene
        .call("GET", "/task-runner/model-deployment-task-1", None)
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["status"], "succeeded", "{state}");
    let (status, tail) = scene
        .call("GET", "/task-runner/model-deployment-task-1/logs", None)
        .await;
    assert_eq!(status, 200, "{tail}");

    // The canary (git token and task secret) is nowhere but in the worker's environment.
    let mut seen = vec![
        ("API answers".to_owned(), format!("{state}{tail}")),
        ("worker logs".to_owned(), scene.aws.worker_logs().await),
    ];
    for task_id in [
        "model-deployment-task-1",
        "box-fail-1",
        "box-cancel-1",
        "box-tasks-dir-1",
        "box-missing-1",
        "box-key-1",
        "box-chain-1",
        "box-chain-1.step",
    ] {
        seen.push((
            format!("execution history of {task_id}"),
            scene.aws.history(task_id).await.to_string(),
        ));
    }
    for received in scene.receiver.received() {
        seen.push((
            "a callback".to_owned(),
            format!(
                "{:?}{}",
                received.headers,
                String::from_utf8_lossy(&received.body)
            ),
        ));
    }
    seen.extend(scene.aws.function_logs());
    for (place, text) in &seen {
        assert!(!text.contains(CANARY), "the secret leaked into {place}");
    }
    assert!(
        seen[1].1.contains("deploying sample-model"),
        "worker logs: {}",
        seen[1].1
    );

    println!(
        "aws_box: twelve tasks (one started by another) through moto's Step Functions, the real functions, the CodeBuild stand-in and its events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The event scenario's safety net, in seconds.
const SAFETY_NET: &str = "30";

/// The middle value and the largest, in seconds.
fn p50_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[values.len() - 1])
}

/// Seconds from the task's end in its worker (the end of BUILD) to FinishAndCallback.
async fn detection(scene: &Scene, task_id: &str) -> f64 {
    let ended = scene.aws.codebuild.task_end(task_id).unwrap();
    let finishing = scene
        .aws
        .entered_at(task_id, "FinishAndCallback")
        .await
        .unwrap();
    finishing - ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workers_end_resumes_its_execution_and_a_lost_event_only_delays_it() {
    let _alone = ONE_SCENE.lock().await;
    let started = Instant::now();
    // A short safety net, so the task whose events are dropped is caught within half a
    // minute (longer than a build takes here, so no other task reaches it); a kept worker
    // stays long after its task, so only the end of BUILD can end that task soon.
    let scene = Scene::start_with(&[
        ("TASKRUNNER_POLL_SAFETY_SECONDS", SAFETY_NET),
        ("TASKRUNNER_POLL_SAFETY_MAX_SECONDS", SAFETY_NET),
        ("TASKRUNNER_KEEP_WORKSPACE_SECONDS", "120"),
        // Room for every task at once: none waits in line (a queued task is polled).
        ("TASKRUNNER_MAX_CONCURRENT_WORKERS", "10"),
    ])
    .await;
    let callback_url = scene.receiver.url.clone();
    let task = |task_id: &str, file: &str| {
        json!({"task_id": task_id, "task_file_name": file,
               "worker_config": {"worker_size": "Small"}, "callback_url": callback_url})
    };
    let quick: Vec<String> = (1..=4).map(|i| format!("ev-{i}")).collect();
    scene.aws.keep_token_late("ev-race");
    scene.aws.events.drop_events_of("ev-lost");
    let mut kept = task("ev-kept", "ci/report.sh");
    kept["terminate_on_completion"] = json!(false);
    let mut bodies: Vec<Value> = quick.iter().map(|id| task(id, "ci/report.sh")).collect();
    bodies.push(kept);
    bodies.push(task("ev-race", "ci/report.sh"));
    bodies.push(task("ev-lost", "ci/report.sh"));
    bodies.push(task("ev-cancel", "ci/hold.sh"));
    for body in &bodies {
        let (status, answer) = scene.call("POST", "/task-runner", Some(body)).await;
        assert_eq!(status, 202, "{answer}");
    }

    // Cancelled while its execution waits for the worker's end: the wait ends at once.
    scene.status_is("ev-cancel", "running").await;
    let (status, answer) = scene.call("DELETE", "/task-runner/ev-cancel", None).await;
    assert_eq!(status, 200, "{answer}");
    let cancelled = scene.callback("ev-cancel").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    let mut detections = Vec::new();
    for task_id in quick
        .iter()
        .map(String::as_str)
        .chain(["ev-kept", "ev-race"])
    {
        let done = scene.callback(task_id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert!(
            done["logs"]
                .as_str()
                .unwrap()
                .contains("report from the tasks directory"),
            "{done}"
        );
        // The worker's end resumed the wait: the safety-net poll never ran.
        let states = scene.aws.states_entered(task_id).await;
        assert!(
            !states.iter().any(|s| s == "PollWorker"),
            "{task_id}: {states:?}"
        );
        // The race's wait was held back on purpose: not a detection figure.
        if task_id != "ev-race" {
            detections.push(detection(&scene, task_id).await);
        }
    }
    // The kept worker's task ended with its BUILD phase, while the build itself stays.
    assert_eq!(scene.aws.codebuild.build_end("ev-kept"), None);
    // The race: the build's end reached worker-events before any token was kept (nothing
    // to resume then), and the wait found the worker ended when it kept its token.
    let early: Vec<_> = scene
        .aws
        .events
        .deliveries()
        .into_iter()
        .filter(|d| d.task_id == "ev-race")
        .collect();
    assert!(!early.is_empty(), "ev-race's events were delivered");
    for delivery in &early {
        assert_eq!(delivery.answer["outcome"], "ignored", "{delivery:?}");
    }

    // The rule "disabled" for one task: its events never arrive, the safety net ends it.
    let lost = scene.callback("ev-lost").await;
    assert_eq!(lost["status"], "succeeded", "{lost}");
    let states = scene.aws.states_entered("ev-lost").await;
    assert!(states.iter().any(|s| s == "PollWorker"), "{states:?}");
    let lost_delay = detection(&scene, "ev-lost").await;

    // Every event the builds emitted went through the rule; those it matched were answered
    // (no function error), and no token reached a log.
    let deliveries = scene.aws.events.deliveries();
    for delivery in &deliveries {
        assert!(
            delivery.answer.get("errorType").is_none(),
            "worker-events failed on {delivery:?}"
        );
    }
    let logs: String = scene
        .aws
        .function_logs()
        .into_iter()
        .map(|(_, log)| log)
        .collect();
    let mut tokens = Vec::new();
    for task_id in bodies.iter().filter_map(|b| b["task_id"].as_str()) {
        tokens.extend(scene.aws.task_tokens(task_id).await);
    }
    assert!(
        tokens.len() >= bodies.len(),
        "every task waited: {tokens:?}"
    );
    for token in &tokens {
        assert!(
            !logs.contains(token.as_str()),
            "a task token reached a function log"
        );
    }

    let (p50, max) = p50_max(detections.clone());
    println!(
        "aws_box events: {} events emitted, {} delivered; detection after the worker's end \
         (end of BUILD -> FinishAndCallback entered) over {} tasks: p50 {p50:.2} s, max {max:.2} s \
         ({detections:.2?}); \
         a lost event (rule disabled for the task) ended by the safety net ({} s) after {lost_delay:.1} s; \
         {:.1} s in all",
        scene.aws.events.emitted(),
        deliveries.len(),
        detections.len(),
        SAFETY_NET,
        started.elapsed().as_secs_f64()
    );
}
