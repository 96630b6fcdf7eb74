//! End-to-end tests through the embedded mode: a real `taskrunner serve` process, real
//! SQLite, real git over HTTP, real task processes, a real callback receiver on loopback.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::git_server::{GitServer, create_repository};
use support::receiver::Receiver;
use support::server::Server;
use support::{eventually, set_secret, taskrunner_bin, write_tasks};

const WAIT: Duration = Duration::from_secs(60);
/// The `callback-signing` secret of the tests that check signed callbacks.
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn request(task_id: &str, task_file: &str, callback: &Receiver) -> Value {
    json!({
        "task_id": task_id,
        "task_file_name": task_file,
        "worker_config": {"worker_size": "X-Small", "env_variables": {"GREETING": "hello"}},
        "callback_url": callback.url,
    })
}

async fn callbacks_for(
    receiver: &Receiver,
    task_id: &str,
    count: usize,
) -> Vec<support::receiver::Received> {
    receiver.callbacks_for(task_id, count, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_bash_tasks_succeed_and_a_failing_task_reports_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.path().join("data"), &tmp.path().join("tasks"), &[]);

    for (id, file) in [
        ("py-ok", "ok.py"),
        ("sh-ok", "ok.sh"),
        ("sh-fail", "fail.sh"),
    ] {
        let (status, body) = server.submit(&request(id, file, &receiver)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["success"], true);
        assert_eq!(body["task_id"], id);
        assert_eq!(
            body["status_url"],
            format!("{}/task-runner/{id}", server.url)
        );
    }

    let py = callbacks_for(&receiver, "py-ok", 1).await.remove(0);
    assert_eq!(
        py.header("content-type").as_deref(),
        Some("application/json")
    );
    let py = py.json();
    assert!(
        py.is_object(),
        "the callback body is one JSON object, not a string"
    );
    assert_eq!(py["task_name"], "ok.py");
    assert_eq!(py["success"], true);
    assert_eq!(py["status"], "succeeded");
    assert_eq!(py["exit_code"], 0);
    assert!(
        py["logs"]
            .as_str()
            .unwrap()
            .contains("python says hi hello"),
        "{py}"
    );
    assert!(py["duration_seconds"].as_f64().is_some());

    let sh_ok = callbacks_for(&receiver, "sh-ok", 1).await.remove(0).json();
    assert!(
        sh_ok["logs"]
            .as_str()
            .unwrap()
            .contains("bash says hi hello"),
        "{sh_ok}"
    );
    assert_eq!(sh_ok["success"], true);

    let failed = callbacks_for(&receiver, "sh-fail", 1)
        .await
        .remove(0)
        .json();
    assert_eq!(failed["success"], false);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["exit_code"], 3);
    let logs = failed["logs"].as_str().unwrap();
    assert!(
        logs.contains("about to fail") && logs.contains("bad things"),
        "{logs}"
    );

    let status = server.status("sh-fail").await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["callback"]["delivered"], true);
    let (code, tail) = server
        .call(reqwest::Method::GET, "/task-runner/sh-fail/logs", None)
        .await;
    assert_eq!(code, 200);
    assert!(tail["logs"].as_str().unwrap().contains("bad things"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_need_the_right_token_and_failures_name_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let repos = tmp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    create_repository(
        &repos,
        "models",
        &[
            ("deploy/run.py", "print('deployed from git')\n"),
            ("README", "models\n"),
        ],
    );
    let git = GitServer::start(&repos, "tok-right-1234").await;
    let data = tmp.path().join("data");
    set_secret(&data, "GIT_PAT", "tok-right-1234");
    set_secret(&data, "WRONG_PAT", "tok-wrong-9876");
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&data, &tmp.path().join("tasks"), &[]);

    let with_secret = |id: &str, secret: &str| {
        json!({
            "task_id": id,
            "task_file_name": "deploy/run.py",
            "worker_config": {"git_configs": [{"remote_url": format!("{}/models.git", git.url), "secret_name": secret}]},
            "callback_url": receiver.url,
        })
    };
    for (id, secret) in [
        ("right", "GIT_PAT"),
        ("wrong", "WRONG_PAT"),
        ("missing", "NO_SUCH_SECRET"),
    ] {
        let (status, body) = server.submit(&with_secret(id, secret)).await;
        assert_eq!(status, 202, "{body}");
    }
    let right = callbacks_for(&receiver, "right", 1).await.remove(0).json();
    assert_eq!(right["success"], true, "{right}");
    assert!(
        right["logs"]
            .as_str()
            .unwrap()
            .contains("deployed from git")
    );

    let wrong = callbacks_for(&receiver, "wrong", 1).await.remove(0).json();
    assert_eq!(wrong["success"], false);
    assert_eq!(wrong["status"], "error");
    assert!(
        wrong["reason"].as_str().unwrap().contains("WRONG_PAT"),
        "{wrong}"
    );
    assert!(
        wrong["logs"].as_str().unwrap().contains("WRONG_PAT"),
        "seed clients read only logs: {wrong}"
    );

    let missing = callbacks_for(&receiver, "missing", 1)
        .await
        .remove(0)
        .json();
    assert_eq!(missing["success"], false);
    assert!(
        missing["reason"]
            .as_str()
            .unwrap()
            .contains("NO_SUCH_SECRET"),
        "{missing}"
    );
    assert!(!server.logs().contains("tok-right-1234"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_clients_request_runs_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    write_tasks(&tasks);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        manifest.join("../examples/tasks/deployer_task.py"),
        tasks.join("deployer_task.py"),
    )
    .unwrap();
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.bin"), "weights").unwrap();
    let repos = tmp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    create_repository(&repos, "your-model-repo", &[("README", "x\n")]);
    let git = GitServer::start(&repos, "pat-5678").await;
    let data = tmp.path().join("data");
    set_secret(&data, "MY_GIT_SECRET", "pat-5678");
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&data, &tasks, &[]);

    // What prt.WorkerConfig(...).model_dump_json() produces: everything but the size travels
    // base64-encoded in additional_params; and requests.post(json=json.dumps(...)) sends the
    // whole body as a JSON string.
    use base64::Engine as _;
    let params = json!({
        "git_configs": [{"remote_url": format!("{}/your-model-repo.git", git.url), "secret_name": "MY_GIT_SECRET"}],
        "env_variables": {"DEPLOYMENT_KEY": "depl2", "PREFIX": "models", "MODEL_NAME": "sample-model", "MODEL_DIR": model_dir},
        "personal_secrets": ["MY_GIT_SECRET"],
    });
    let payload = json!({
        "task_id": "model-deployment-task-1",
        "task_file_name": "deployer_task.py",
        "worker_config": {
            "worker_image": null, "worker_size": "X-Small", "service_type": null, "network_protocol": null,
            "service_url": null, "email": null, "refresh_token": null,
            "additional_params": base64::engine::general_purpose::STANDARD.encode(params.to_string()),
        },
        "callback_url": receiver.url,
        "callback_url_token": null,
        "terminate_on_completion": false,
    });
    let double_encoded = serde_json::to_string(&payload.to_string()).unwrap();
    let (status, body) = server
        .call(reqwest::Method::POST, "/task-runner/", Some(double_encoded))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Started Task successfully");

    let callback = callbacks_for(&receiver, "model-deployment-task-1", 1)
        .await
        .remove(0)
        .json();
    assert_eq!(callback["success"], true, "{callback}");
    assert_eq!(callback["task_name"], "deployer_task.py");
    assert!(
        callback["logs"]
            .as_str()
            .unwrap()
            .contains("Deploying sample-model"),
        "{callback}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_runs_once_and_another_body_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.path().join("data"), &tmp.path().join("tasks"), &[]);
    let body = request("once", "ok.sh", &receiver);

    let (first, _) = server.submit(&body).await;
    let (second, answer) = server.submit(&body).await;
    assert_eq!((first, second), (202, 202));
    assert_eq!(answer["task_id"], "once");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("already accepted"),
        "{answer}"
    );

    let mut other = body.clone();
    other["task_file_name"] = json!("fail.sh");
    let (conflict, message) = server.submit(&other).await;
    assert_eq!(conflict, 409, "{message}");
    assert!(message["message"].as_str().unwrap().contains("task_id"));

    callbacks_for(&receiver, "once", 1).await;
    let (third, _) = server.submit(&body).await;
    assert_eq!(
        third, 202,
        "the same request after the end still returns the task"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = receiver
        .received()
        .iter()
        .filter(|r| r.json()["task_id"] == "once")
        .count();
    assert_eq!(count, 1, "one run, one callback");
}

/// A `serve` over `tmp/data` (tasks in `tmp/tasks`) running `task_id`, a `sleep.sh` of
/// `seconds` that calls back to the receiver returned.
async fn serve_running_a_sleep(
    tmp: &Path,
    task_id: &str,
    seconds: u64,
) -> (std::path::PathBuf, Receiver, Server) {
    let tasks = tmp.join("tasks");
    write_tasks(&tasks);
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.join("data"), &tasks, &[]);
    let mut body = request(task_id, "sleep.sh", &receiver);
    body["worker_config"]["env_variables"]["SLEEP_SECONDS"] = json!(seconds);
    let (status, _) = server.submit(&body).await;
    assert_eq!(status, 202);
    eventually(WAIT, "the task to run", async || {
        (server.status(task_id).await["status"] == "running").then_some(())
    })
    .await;
    (tasks, receiver, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_every_task_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (tasks, receiver, mut server) = serve_running_a_sleep(tmp.path(), "survivor", 4).await;
    let data = tmp.path().join("data");
    server.kill9();
    assert!(receiver.received().is_empty());

    let restarted = Server::start(&data, &tasks, &[]);
    let callbacks = callbacks_for(&receiver, "survivor", 1).await;
    let callback = callbacks[0].json();
    assert_eq!(callback["success"], true, "{callback}");
    assert!(callback["logs"].as_str().unwrap().contains("slept"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "delivered once");
    assert_eq!(restarted.status("survivor").await["status"], "succeeded");
    // Its kept token survived the kill: the worker's end resumed the wait, not a poll.
    let history = restarted.history("survivor").await;
    assert!(!history.to_string().contains("\"PollWorker\""), "{history}");
}

/// Submits `bodies` from `submitters` concurrent clients, each body once; returns the task
/// ids answered 202. A request the server never answers (it was killed) counts as not
/// accepted; `accepted` counts the 202s as they come.
async fn submit_all(
    url: &str,
    bodies: Vec<Value>,
    submitters: usize,
    accepted: &Arc<AtomicUsize>,
) -> Vec<String> {
    let queue = Arc::new(Mutex::new(bodies));
    let mut clients = Vec::new();
    for _ in 0..submitters {
        let (queue, accepted, url) = (queue.clone(), accepted.clone(), url.to_owned());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = Vec::new();
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    return ids;
                };
                let answer = http
                    .post(format!("{url}/task-runner"))
                    .bearer_auth(support::server::API_KEY)
                    .json(&body)
                    .send()
                    .await;
                if answer.is_ok_and(|answer| answer.status() == 202) {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    ids.push(body["task_id"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_burst_loses_no_accepted_task_and_runs_none_twice() {
    const TASKS: usize = 80;
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    write_tasks(&tasks);
    let tally = tmp.path().join("tally.txt");
    let receiver = Receiver::start(vec![]).await;
    let data = tmp.path().join("data");
    // Signed, so that each callback carries its delivery's id.
    set_secret(&data, "callback-signing", SIGNING_SECRET);
    let mut server = Server::start(&data, &tasks, &[]);
    let bodies: Vec<Value> = (0..TASKS)
        .map(|i| {
            let mut body = request(&format!("burst-{i:02}"), "tally.sh", &receiver);
            let env = &mut body["worker_config"]["env_variables"];
            env["TRACK_FILE"] = json!(tally.display().to_string());
            env["SLEEP_SECONDS"] = json!("0.2");
            body
        })
        .collect();

    // Killed while requests are still coming in and the first tasks start, run and call back.
    let accepted = Arc::new(AtomicUsize::new(0));
    let burst = tokio::spawn({
        let (url, bodies, accepted) = (server.url.clone(), bodies.clone(), accepted.clone());
        async move { submit_all(&url, bodies, 8, &accepted).await }
    });
    eventually(WAIT, "a third of the burst accepted", async || {
        (accepted.load(Ordering::SeqCst) >= TASKS / 3).then_some(())
    })
    .await;
    server.kill9();
    let before_kill = burst.await.unwrap();
    assert!(
        before_kill.len() < TASKS,
        "the kill came before the burst ended"
    );

    // Every task answered 202 runs after the restart; the client sends again what got no
    // answer, as a CI job retrying would.
    let restarted = Server::start(&data, &tasks, &[]);
    let unanswered: Vec<Value> = bodies
        .iter()
        .filter(|body| !before_kill.iter().any(|id| body["task_id"] == id.as_str()))
        .cloned()
        .collect();
    let retried = unanswered.len();
    let after_restart = submit_all(&restarted.url, unanswered, 8, &accepted).await;
    assert_eq!(after_restart.len(), retried, "every retry is accepted");

    for body in &bodies {
        let id = body["task_id"].as_str().unwrap();
        let callbacks = callbacks_for(&receiver, id, 1).await;
        assert_eq!(
            callbacks[0].json()["success"],
            true,
            "{}",
            callbacks[0].json()
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran = std::fs::read_to_string(&tally).unwrap();
    for body in &bodies {
        let id = body["task_id"].as_str().unwrap();
        let runs = ran
            .lines()
            .filter(|line| *line == format!("ran {id}"))
            .count();
        assert_eq!(runs, 1, "{id} ran {runs} times");
        // A callback sent again after the restart is the same delivery (same webhook id).
        let ids: std::collections::HashSet<_> = receiver
            .received()
            .iter()
            .filter(|r| r.json()["task_id"] == id)
            .map(|r| r.header("webhook-id").unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{id}: {ids:?}");
        assert_eq!(restarted.status(id).await["status"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_exits_cleanly_and_the_next_one_finishes_its_running_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (tasks, receiver, mut server) =
        serve_running_a_sleep(tmp.path(), "outlives-serve", 3).await;
    let data = tmp.path().join("data");
    let stopped = server
        .terminate(Duration::from_secs(10))
        .expect("serve exits within 10 s of SIGTERM");
    assert!(stopped.success(), "{stopped:?}\n{}", server.logs());
    assert!(
        server.logs().contains("running tasks go on"),
        "{}",
        server.logs()
    );

    let restarted = Server::start(&data, &tasks, &[]);
    let callbacks = callbacks_for(&receiver, "outlives-serve", 1).await;
    assert_eq!(
        callbacks[0].json()["success"],
        true,
        "{}",
        callbacks[0].json()
    );
    assert_eq!(
        restarted.status("outlives-serve").await["status"],
        "succeeded"
    );
}

/// The nice value in `/proc/self/stat`, and the autogroup's where the process is in one (the
/// file is missing without autogroups, and empty in the kernel's default group, as for the
/// processes of some containers).
fn priorities(stat: &str, autogroup: Option<&str>) -> (i32, Option<i32>) {
    let nice = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(16);
    let group = autogroup
        .and_then(|text| text.split_whitespace().last())
        .map(|value| value.parse().unwrap());
    (nice.unwrap().parse().unwrap(), group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_below_the_servers_cpu_priority_unless_told_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    write_tasks(&tasks);
    std::fs::write(
        tasks.join("priority.sh"),
        "echo \"stat=$(cat /proc/self/stat)\"\n[ -r /proc/self/autogroup ] && echo \"autogroup=$(cat /proc/self/autogroup)\"\nexit 0\n",
    )
    .unwrap();
    let receiver = Receiver::start(vec![]).await;
    // The servers are children of this process, in its session and autogroup.
    let own = priorities(
        &std::fs::read_to_string("/proc/self/stat").unwrap(),
        std::fs::read_to_string("/proc/self/autogroup")
            .ok()
            .as_deref(),
    );
    for (task_nice, lowered) in [(None, 10), (Some("0"), 0)] {
        let data = tmp.path().join(format!("data-{lowered}"));
        let env: Vec<(&str, &str)> = task_nice
            .map(|n| ("TASKRUNNER_TASK_NICE", n))
            .into_iter()
            .collect();
        let server = Server::start(&data, &tasks, &env);
        let id = format!("priority-{lowered}");
        let (status, _) = server.submit(&request(&id, "priority.sh", &receiver)).await;
        assert_eq!(status, 202);
        let callback = callbacks_for(&receiver, &id, 1).await[0].json();
        let logs = callback["logs"].as_str().unwrap().to_owned();
        let line = |prefix: &str| {
            logs.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .map(str::to_owned)
        };
        let task = priorities(&line("stat=").expect(&logs), line("autogroup=").as_deref());
        assert_eq!(task.0, (own.0 + lowered).min(19), "task nice: {logs}");
        if let (Some(server_group), Some(task_group)) = (own.1, task.1) {
            assert_eq!(
                task_group,
                (server_group + lowered).min(19),
                "autogroup: {logs}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_refuses_and_names_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    write_tasks(&tasks);
    let data = tmp.path().join("data");
    let mut first = Server::start(&data, &tasks, &[]);
    let holder = std::fs::read_to_string(data.join("owner.lock")).unwrap();

    let second = std::process::Command::new(taskrunner_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--tasks-dir")
        .arg(&tasks)
        .env("TASKRUNNER_API_KEY", "test-api-key-0123")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("process {}", holder.trim())),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&second.stdout).is_empty());

    let cleanup = std::process::Command::new(taskrunner_bin())
        .arg("cleanup")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!cleanup.status.success());
    assert!(String::from_utf8_lossy(&cleanup.stderr).contains("in use by another taskrunner"));

    // After kill -9 the lock is gone with its holder: a restart owns the directory.
    first.kill9();
    let _restarted = Server::start(&data, &tasks, &[]);
    let new_holder = std::fs::read_to_string(data.join("owner.lock")).unwrap();
    assert_ne!(new_holder, holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_gets_the_callback_again_with_the_same_webhook_id() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let data = tmp.path().join("data");
    set_secret(&data, "callback-signing", SIGNING_SECRET);
    let receiver = Receiver::start(vec![500, 500]).await;
    let server = Server::start(&data, &tmp.path().join("tasks"), &[]);
    let (status, _) = server.submit(&request("retried", "ok.sh", &receiver)).await;
    assert_eq!(status, 202);

    let attempts = callbacks_for(&receiver, "retried", 3).await;
    let ids: Vec<_> = attempts
        .iter()
        .map(|a| a.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids, vec!["msg_retried"; 3]);
    let last = &attempts[2];
    let secrets = [taskrunner::secret::Secret::new(SIGNING_SECRET)];
    taskrunner::callback::verify(
        (
            &last.header("webhook-id").unwrap(),
            &last.header("webhook-timestamp").unwrap(),
            &last.header("webhook-signature").unwrap(),
        ),
        &last.body,
        &secrets,
        chrono::Utc::now(),
        Duration::from_secs(300),
    )
    .expect("the signature verifies");
    let body_file = tmp.path().join("body.json");
    let verify = |body: &[u8]| {
        std::fs::write(&body_file, body).unwrap();
        std::process::Command::new(taskrunner_bin())
            .arg("verify-callback")
            .arg(&body_file)
            .args(["--id", &last.header("webhook-id").unwrap()])
            .args(["--timestamp", &last.header("webhook-timestamp").unwrap()])
            .args(["--signature", &last.header("webhook-signature").unwrap()])
            .env("TASKRUNNER_CALLBACK_SECRET", SIGNING_SECRET)
            .output()
            .unwrap()
    };
    assert!(
        verify(&last.body).status.success(),
        "verify-callback accepts what was sent"
    );
    let mut flipped = last.body.to_vec();
    flipped[1] ^= 1;
    let refused = verify(&flipped);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid"));
    let status = eventually(WAIT, "delivery recorded", async || {
        let status = server.status("retried").await;
        (status["callback"]["delivered"] == true).then_some(status)
    })
    .await;
    assert_eq!(status["callback"]["status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_loses_its_whole_process_group_and_says_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.path().join("data"), &tmp.path().join("tasks"), &[]);
    let (status, _) = server
        .submit(&request("doomed", "spawn.sh", &receiver))
        .await;
    assert_eq!(status, 202);

    let logs = eventually(WAIT, "the task to report its group", async || {
        let (_, tail) = server
            .call(reqwest::Method::GET, "/task-runner/doomed/logs", None)
            .await;
        let logs = tail["logs"].as_str().unwrap_or_default().to_owned();
        logs.contains("group ").then_some(logs)
    })
    .await;
    let number = |prefix: &str| -> i32 {
        logs.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {logs}"))
    };
    let (child, group) = (number("child "), number("group "));
    assert!(
        unsafe { libc::kill(-group, 0) } == 0,
        "the group runs before the cancel"
    );

    let (code, answer) = server
        .call(reqwest::Method::DELETE, "/task-runner/doomed", None)
        .await;
    assert_eq!(code, 200, "{answer}");
    let callback = callbacks_for(&receiver, "doomed", 1).await.remove(0).json();
    assert_eq!(callback["status"], "cancelled", "{callback}");
    assert_eq!(callback["success"], false);
    assert!(
        unsafe { libc::kill(-group, 0) } != 0,
        "the process group is gone"
    );
    assert!(
        unsafe { libc::kill(child, 0) } != 0,
        "the background child is gone"
    );
    assert_eq!(server.status("doomed").await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_timeout_ends_as_timed_out() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.path().join("data"), &tmp.path().join("tasks"), &[]);
    let mut body = request("slow", "sleep.sh", &receiver);
    body["timeout_seconds"] = json!(2);
    let (status, _) = server.submit(&body).await;
    assert_eq!(status, 202);
    let callback = callbacks_for(&receiver, "slow", 1).await.remove(0).json();
    assert_eq!(callback["status"], "timed_out", "{callback}");
    assert_eq!(callback["success"], false);
    assert!(callback["logs"].as_str().unwrap().contains("started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_never_leaks() {
    const CANARY: &str = "canary-7f3a9c2e51d4";
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    write_tasks(&tasks);
    let repos = tmp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    create_repository(&repos, "private", &[("README", "private\n")]);
    let git = GitServer::start(&repos, CANARY).await;
    let data = tmp.path().join("data");
    set_secret(&data, "MY_TOKEN", CANARY);
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&data, &tasks, &[]);

    let body = json!({
        "task_id": "leaky",
        "task_file_name": "leak.py",
        "worker_config": {
            "personal_secrets": ["MY_TOKEN"],
            "git_configs": [{"remote_url": format!("{}/private.git", git.url), "secret_name": "MY_TOKEN"}],
        },
        "callback_url": receiver.url,
        "callback_url_token": CANARY,
        "terminate_on_completion": false,
    });
    let (status, answer) = server.submit(&body).await;
    assert_eq!(status, 202, "{answer}");
    assert!(!answer.to_string().contains(CANARY));
    let received = callbacks_for(&receiver, "leaky", 1).await.remove(0);
    assert_eq!(
        received.header("authorization"),
        Some(format!("Bearer {CANARY}")),
        "the receiver gets its token"
    );
    let callback = received.json();
    assert_eq!(callback["success"], true, "{callback}");
    let logs = callback["logs"].as_str().unwrap();
    assert!(logs.contains("token is ***"), "{logs}");
    assert!(logs.contains("env has git token: False"), "{logs}");
    assert!(!String::from_utf8_lossy(&received.body).contains(CANARY));

    for path in ["/task-runner/leaky", "/task-runner/leaky/logs"] {
        let (_, answer) = server.call(reqwest::Method::GET, path, None).await;
        assert!(!answer.to_string().contains(CANARY), "{path}: {answer}");
    }
    assert!(!server.logs().contains(CANARY), "server logs");
    let mut files = vec![data.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                "{} holds the secret in clear",
                path.display()
            );
        }
    }
}

#[test]
fn the_readme_command_runs_the_hello_example_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new(taskrunner_bin())
        .args(["run", "examples/hello.json", "--data-dir"])
        .arg(tmp.path())
        .current_dir(&root)
        .env_remove("TASKRUNNER_MASTER_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let callback: Value = serde_json::from_str(&stdout).expect("the callback body on stdout");
    assert_eq!(callback["success"], true);
    assert!(
        callback["logs"]
            .as_str()
            .unwrap()
            .contains("hello from taskrunner"),
        "{callback}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_limit_queues_tasks_in_order_and_never_drops_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let track = tmp.path().join("track.log");
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(
        &tmp.path().join("data"),
        &tmp.path().join("tasks"),
        &[("TASKRUNNER_MAX_CONCURRENT_WORKERS", "2")],
    );
    let ids = ["c1", "c2", "c3", "c4", "c5", "c6"];
    for (index, id) in ids.iter().enumerate() {
        let mut body = request(id, "track.sh", &receiver);
        body["worker_config"]["env_variables"]["TRACK_FILE"] = json!(track);
        if index % 2 == 0 {
            body["concurrency_key"] = json!("app-a");
        }
        let (status, answer) = server.submit(&body).await;
        assert_eq!(status, 202, "{answer}");
    }
    eventually(WAIT, "c6 to wait in line", async || {
        (server.status("c6").await["status"] == "queued").then_some(())
    })
    .await;

    for id in ids {
        let callback = callbacks_for(&receiver, id, 1).await.remove(0).json();
        assert_eq!(callback["success"], true, "{callback}");
    }
    let log = std::fs::read_to_string(&track).unwrap();
    let mut events: Vec<(u128, bool, String)> = log
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let kind = parts.next()?;
            let id = parts.next()?.to_owned();
            let at = parts.next()?.parse().ok()?;
            Some((at, kind == "start", id))
        })
        .collect();
    events.sort();
    assert_eq!(events.len(), 12, "{log}");
    let (mut running, mut most) = (0i32, 0i32);
    for (_, start, _) in &events {
        running += if *start { 1 } else { -1 };
        most = most.max(running);
    }
    assert!(most <= 2, "at most 2 tasks ran at once, saw {most}: {log}");
    let position = |kind: bool, id: &str| {
        events
            .iter()
            .position(|(_, start, name)| *start == kind && name == id)
            .unwrap()
    };
    assert!(
        position(false, "c1") < position(true, "c3"),
        "app-a runs one at a time, in order: {log}"
    );
    assert!(
        position(false, "c3") < position(true, "c5"),
        "app-a runs one at a time, in order: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wins_cancels_the_running_task_with_the_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.path().join("data"), &tmp.path().join("tasks"), &[]);
    let mut old = request("deploy-old", "sleep.sh", &receiver);
    old["concurrency_key"] = json!("deploy:app");
    assert_eq!(server.submit(&old).await.0, 202);
    eventually(WAIT, "the old deploy to run", async || {
        (server.status("deploy-old").await["status"] == "running").then_some(())
    })
    .await;
    let mut new = request("deploy-new", "ok.sh", &receiver);
    new["concurrency_key"] = json!("deploy:app");
    new["cancel_in_progress"] = json!(true);
    assert_eq!(server.submit(&new).await.0, 202);

    let old = callbacks_for(&receiver, "deploy-old", 1)
        .await
        .remove(0)
        .json();
    assert_eq!(old["status"], "cancelled", "{old}");
    let new = callbacks_for(&receiver, "deploy-new", 1)
        .await
        .remove(0)
        .json();
    assert_eq!(new["status"], "succeeded", "{new}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_internal_addresses_are_refused_and_the_status_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    write_tasks(&tmp.path().join("tasks"));
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(
        &tmp.path().join("data"),
        &tmp.path().join("tasks"),
        &[("TASKRUNNER_CALLBACK_ALLOW_LOOPBACK", "false")],
    );
    let mut literal = request("to-metadata", "ok.sh", &receiver);
    literal["callback_url"] = json!("http://169.254.169.254/latest/meta-data");
    let (status, answer) = server.submit(&literal).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("callback_url"),
        "{answer}"
    );

    // A name is checked when the callback is sent: localhost resolves to loopback.
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    let mut named = request("to-localhost", "ok.sh", &receiver);
    named["callback_url"] = json!(format!("http://localhost:{port}"));
    let (status, _) = server.submit(&named).await;
    assert_eq!(status, 202);
    let status = eventually(WAIT, "the refused delivery", async || {
        let status = server.status("to-localhost").await;
        status["callback"]["error"].is_string().then_some(status)
    })
    .await;
    assert_eq!(
        status["status"], "succeeded",
        "the task itself ran: {status}"
    );
    assert_eq!(status["callback"]["delivered"], false);
    assert!(
        status["callback"]["error"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{status}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
}

#[cfg(feature = "aws")]
#[test]
fn aws_secret_commands_write_under_the_deployment_prefix() {
    let moto = support::moto::Moto::start();
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(taskrunner_bin())
            .args(args)
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["secret", "set", "GIT_PAT", "--aws"], Some("tok-in-aws-1"));
    assert!(run(&["secret", "list", "--aws"], None).contains("GIT_PAT"));
    let script = format!(
        "import boto3; print(boto3.client('secretsmanager', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='t', aws_secret_access_key='t').get_secret_value(SecretId='taskrunner/GIT_PAT')['SecretString'])",
        moto.endpoint
    );
    let stored = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim(),
        "tok-in-aws-1"
    );
    run(&["secret", "delete", "GIT_PAT", "--aws"], None);
    assert!(!run(&["secret", "list", "--aws"], None).contains("GIT_PAT"));
}
