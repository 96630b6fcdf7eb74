//! Task chaining end to end: a real `taskrunner serve`, real bash and Python parent tasks that
//! start children with the `taskrunner` on their PATH and their own task token, and a real
//! callback receiver.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::eventually;
use support::receiver::{Received, Receiver};
use support::server::Server;

const WAIT: Duration = Duration::from_secs(90);

/// A task that reports its process group, writes its task token to `$TOKEN_FILE` (outside
/// the data directory, so the test can act as the task) and runs until `$RELEASE` exists.
const HOLD: &str = r#"echo "group $(cut -d' ' -f5 /proc/$$/stat)"
echo "my token is $TASKRUNNER_TASK_TOKEN"
printf %s "$TASKRUNNER_TASK_TOKEN" > "$TOKEN_FILE"
i=0
while [ ! -e "$RELEASE" ]; do sleep 0.1; i=$((i+1)); [ $i -gt 1200 ] && exit 9; done
echo released
"#;

/// The tasks directory: the chaining examples, `fail.sh`, and `hold.sh`.
fn tasks_dir(root: &Path) -> PathBuf {
    let tasks = root.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks");
    for name in [
        "chain-deploy.sh",
        "chain-step.sh",
        "chain-fanout.py",
        "fail.sh",
    ] {
        std::fs::copy(examples.join(name), tasks.join(name)).unwrap();
    }
    std::fs::write(tasks.join("hold.sh"), HOLD).unwrap();
    tasks
}

/// A `hold.sh` request whose token lands in `root/<id>.token`, released by `root/release`.
fn hold(root: &Path, task_id: &str, receiver: &Receiver) -> Value {
    json!({
        "task_id": task_id,
        "task_file_name": "hold.sh",
        "worker_config": {"env_variables": {
            "TOKEN_FILE": root.join(format!("{task_id}.token")),
            "RELEASE": root.join("release"),
        }},
        "callback_url": receiver.url,
    })
}

/// The token a `hold.sh` task wrote, once it did.
async fn token_of(root: &Path, task_id: &str) -> String {
    let file = root.join(format!("{}.token", task_id.rsplit('.').next().unwrap()));
    eventually(WAIT, &format!("the token of {task_id}"), async || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|token| !token.is_empty())
    })
    .await
}

/// A call with `token` as the bearer: status and JSON body.
async fn call_as(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn callback_of(receiver: &Receiver, task_id: &str) -> Received {
    eventually(WAIT, &format!("the callback of {task_id}"), async || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.json()["task_id"] == task_id)
    })
    .await
}

async fn ended(server: &Server, task_id: &str) -> Value {
    eventually(WAIT, &format!("{task_id} to end"), async || {
        let status = server.status(task_id).await;
        (status["done"] == true && status["callback"]["delivered"] == true).then_some(status)
    })
    .await
}

/// Whether `needle` occurs in any file under `dir`.
fn found_under(dir: &Path, needle: &str) -> Option<PathBuf> {
    let mut files = vec![dir.to_owned()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Some(path);
            }
        }
    }
    None
}

/// Serves the examples and submits `task_file` as `task_id`, its children calling back too.
async fn run_example(task_id: &str, task_file: &str) -> (tempfile::TempDir, Receiver, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tasks_dir(tmp.path());
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&tmp.path().join("data"), &tasks, &[]);
    let (code, answer) = server
        .submit(&json!({
            "task_id": task_id,
            "task_file_name": task_file,
            "worker_config": {"env_variables": {"CALLBACK_URL": receiver.url}},
            "callback_url": receiver.url,
        }))
        .await;
    assert_eq!(code, 202, "{answer}");
    (tmp, receiver, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bash_parent_runs_three_children_in_sequence_and_sees_the_fourth_fail() {
    let (_tmp, receiver, server) = run_example("deploy-1", "chain-deploy.sh").await;

    let parent = callback_of(&receiver, "deploy-1").await.json();
    assert_eq!(parent["status"], "failed", "{parent}");
    assert_eq!(parent["exit_code"], 4, "{}", parent["logs"]);
    let logs = parent["logs"].as_str().unwrap();
    for line in [
        "child train succeeded",
        "child evaluate succeeded",
        "child publish succeeded",
        "smoke test failed (exit 1): not deploying",
        "task deploy-1.train: succeeded",
    ] {
        assert!(logs.contains(line), "{line:?} not in {logs}");
    }
    let children = json!([
        {"task_id": "deploy-1.train", "status": "succeeded"},
        {"task_id": "deploy-1.evaluate", "status": "succeeded"},
        {"task_id": "deploy-1.publish", "status": "succeeded"},
        {"task_id": "deploy-1.smoke-test", "status": "failed"},
    ]);
    assert_eq!(
        parent["children"], children,
        "the parent's callback lists its children"
    );
    for step in ["train", "evaluate", "publish"] {
        let child = callback_of(&receiver, &format!("deploy-1.{step}"))
            .await
            .json();
        assert_eq!(child["status"], "succeeded", "{child}");
        assert!(
            child["logs"]
                .as_str()
                .unwrap()
                .contains(&format!("step {step} done by deploy-1.{step}")),
            "{child}"
        );
    }
    let smoke = callback_of(&receiver, "deploy-1.smoke-test").await.json();
    assert_eq!(smoke["status"], "failed");

    let status = server.status("deploy-1").await;
    assert_eq!(status["children"], children);
    assert_eq!(status["parent_task_id"], Value::Null);
    let child = server.status("deploy-1.publish").await;
    assert_eq!(child["parent_task_id"], "deploy-1");
    let (_, list) = server
        .call(reqwest::Method::GET, "/task-runner?prefix=deploy-1.", None)
        .await;
    let listed: Vec<&Value> = list["tasks"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 4, "{list}");
    assert!(
        listed
            .iter()
            .all(|task| task["parent_task_id"] == "deploy-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_parent_starts_two_children_at_once_and_polls_them() {
    let (_tmp, receiver, _server) = run_example("fanout-1", "chain-fanout.py").await;
    let parent = callback_of(&receiver, "fanout-1").await.json();
    assert_eq!(parent["status"], "succeeded", "{parent}");
    let logs = parent["logs"].as_str().unwrap();
    for line in [
        "started fanout-1.shard-a",
        "started fanout-1.shard-b",
        "fanout-1.shard-a succeeded",
        "fanout-1.shard-b succeeded",
    ] {
        assert!(logs.contains(line), "{line:?} not in {logs}");
    }
    for shard in ["a", "b"] {
        let child = callback_of(&receiver, &format!("fanout-1.shard-{shard}")).await;
        assert_eq!(child.json()["status"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_token_reaches_only_its_own_descendants_and_dies_with_its_task() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tasks = tasks_dir(root);
    let data = root.join("data");
    support::set_secret(&data, "ALLOWED", "allowed-value-1");
    support::set_secret(&data, "WIDER", "wider-value-1");
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&data, &tasks, &[]);
    let mut scoped = hold(root, "scoped", &receiver);
    scoped["worker_config"]["personal_secrets"] = json!(["ALLOWED"]);
    assert_eq!(server.submit(&scoped).await.0, 202);
    assert_eq!(
        server.submit(&hold(root, "sibling", &receiver)).await.0,
        202
    );
    let token = token_of(root, "scoped").await;
    let get = reqwest::Method::GET;

    let (code, body) = call_as(&server, &token, get.clone(), "/task-runner", None).await;
    assert_eq!(code, 403, "listing every task: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("task token (task scoped)")
    );
    for (method, path) in [
        (get.clone(), "/task-runner/sibling/logs"),
        (get.clone(), "/task-runner/sibling"),
        (reqwest::Method::DELETE, "/task-runner/sibling"),
        (get.clone(), "/task-runner/scoped/history"),
    ] {
        let (code, body) = call_as(&server, &token, method, path, None).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("only its own descendants"),
            "{body}"
        );
    }

    let mut wider = json!({"task_id": "kid", "task_file_name": "chain-step.sh",
        "worker_config": {"personal_secrets": ["ALLOWED", "WIDER"]}});
    let post = reqwest::Method::POST;
    let (code, body) = call_as(&server, &token, post.clone(), "/task-runner", Some(&wider)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("secret \"WIDER\""),
        "{body}"
    );
    wider["worker_config"]["personal_secrets"] = json!(["ALLOWED"]);
    let (code, body) = call_as(&server, &token, post.clone(), "/task-runner", Some(&wider)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["task_id"], "scoped.kid");
    let (code, again) = call_as(&server, &token, post, "/task-runner", Some(&wider)).await;
    assert_eq!(
        (code, &again["task_id"]),
        (202, &json!("scoped.kid")),
        "{again}"
    );
    assert!(again["message"].as_str().unwrap().contains("existing task"));
    for path in [
        "/task-runner/scoped.kid",
        "/task-runner/scoped.kid/logs",
        "/task-runner/scoped.kid/history",
    ] {
        let (code, body) = call_as(&server, &token, get.clone(), path, None).await;
        assert_eq!(code, 200, "{path}: {body}");
    }

    std::fs::write(root.join("release"), "").unwrap();
    let status = ended(&server, "scoped").await;
    assert_eq!(status["children"][0]["task_id"], "scoped.kid");
    let (code, body) = call_as(&server, &token, get, "/task-runner/scoped.kid", None).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("task ended"),
        "{body}"
    );

    // The token was in the task's environment only: masked in its log, nowhere else.
    let callback = callback_of(&receiver, "scoped").await;
    assert!(
        callback.json()["logs"]
            .as_str()
            .unwrap()
            .contains("my token is ***")
    );
    assert!(!String::from_utf8_lossy(&callback.body).contains(&token));
    for received in receiver.received() {
        assert!(!String::from_utf8_lossy(&received.body).contains(&token));
    }
    assert!(!server.logs().contains(&token), "server logs");
    assert_eq!(
        found_under(&data, &token),
        None,
        "the data directory holds the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_deeper_than_four_and_too_many_children_are_refused_with_429() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tasks = tasks_dir(root);
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(
        &root.join("data"),
        &tasks,
        &[("TASKRUNNER_CHAIN_MAX_CHILDREN", "2")],
    );
    assert_eq!(server.submit(&hold(root, "d0", &receiver)).await.0, 202);
    let mut id = "d0".to_owned();
    for depth in 1..=5 {
        let token = token_of(root, &id).await;
        let child = hold(root, &format!("d{depth}"), &receiver);
        let (code, body) = call_as(
            &server,
            &token,
            reqwest::Method::POST,
            "/task-runner",
            Some(&child),
        )
        .await;
        if depth <= 4 {
            assert_eq!(code, 202, "depth {depth}: {body}");
            id = body["task_id"].as_str().unwrap().to_owned();
        } else {
            assert_eq!(code, 429, "depth 5: {body}");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("at most 4 deep"), "{message}");
            assert!(message.contains("TASKRUNNER_CHAIN_MAX_DEPTH"), "{message}");
        }
    }
    assert_eq!(id, "d0.d1.d2.d3.d4");

    let token = token_of(root, "d0").await;
    let mut refused = None;
    for n in 0..3 {
        let child = json!({"task_id": format!("extra-{n}"), "task_file_name": "chain-step.sh",
            "worker_config": {}});
        let (code, body) = call_as(
            &server,
            &token,
            reqwest::Method::POST,
            "/task-runner",
            Some(&child),
        )
        .await;
        if code == 429 {
            refused = Some((n, body));
            break;
        }
        assert_eq!(code, 202, "{body}");
    }
    let (n, body) = refused.expect("the third child of d0 is refused");
    assert_eq!(n, 1, "d0 has d1 and extra-0, so extra-1 is one too many");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("TASKRUNNER_CHAIN_MAX_CHILDREN"),
        "{message}"
    );
    std::fs::write(root.join("release"), "").unwrap();
    for task in ["d0", "d0.d1.d2.d3.d4"] {
        ended(&server, task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_its_child_and_grandchild_first() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tasks = tasks_dir(root);
    let receiver = Receiver::start(vec![]).await;
    let server = Server::start(&root.join("data"), &tasks, &[]);
    assert_eq!(server.submit(&hold(root, "top", &receiver)).await.0, 202);
    let mut parent = "top".to_owned();
    for name in ["mid", "low"] {
        let token = token_of(root, &parent).await;
        let (code, body) = call_as(
            &server,
            &token,
            reqwest::Method::POST,
            "/task-runner",
            Some(&hold(root, name, &receiver)),
        )
        .await;
        assert_eq!(code, 202, "{body}");
        parent = body["task_id"].as_str().unwrap().to_owned();
    }
    let ids = ["top", "top.mid", "top.mid.low"];
    let mut groups = Vec::new();
    for id in ids {
        token_of(root, id).await;
        let logs = eventually(WAIT, &format!("{id} to report its group"), async || {
            let (_, tail) = server
                .call(
                    reqwest::Method::GET,
                    &format!("/task-runner/{id}/logs"),
                    None,
                )
                .await;
            let logs = tail["logs"].as_str().unwrap_or_default().to_owned();
            logs.contains("group ").then_some(logs)
        })
        .await;
        let group: i32 = logs
            .lines()
            .find_map(|line| line.strip_prefix("group "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no group in {logs}"));
        assert!(unsafe { libc::kill(-group, 0) } == 0, "{id} runs");
        groups.push(group);
    }

    let (code, body) = server
        .call(reqwest::Method::DELETE, "/task-runner/top", None)
        .await;
    assert_eq!(code, 200, "{body}");
    for id in ids {
        let callback = callback_of(&receiver, id).await.json();
        assert_eq!(callback["status"], "cancelled", "{id}: {callback}");
    }
    for (id, group) in ids.iter().zip(groups) {
        assert!(
            unsafe { libc::kill(-group, 0) } != 0,
            "{id}'s process group is gone"
        );
    }
}
