//! End to end: a GitHub-style push delivered to a real `taskrunner serve` starts the task its
//! config rule names, which clones the pushed commit exactly (not the branch tip) from a git
//! server over HTTP, and the callback arrives.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::git_server::{GitServer, create_repository};
use support::receiver::Receiver;
use support::server::Server;
use support::{eventually, set_secret, sh};
use taskrunner::secret::Secret;
use taskrunner::webhooks::Provider;
use taskrunner::webhooks::verify::signature_header;

const WAIT: Duration = Duration::from_secs(60);
const HOOK_SECRET: &str = "hook-secret-e2e-5678";
const GIT_TOKEN: &str = "git-token-e2e-1234";

fn commit(work: &Path, file: &str, text: &str) -> String {
    std::fs::write(work.join(file), text).unwrap();
    sh(work, "git", &["add", "-A"]);
    sh(work, "git", &["commit", "-q", "-m", file]);
    sh(work, "git", &["push", "-q", "../app.git", "main"]);
    sh(work, "git", &["rev-parse", "HEAD"]).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_push_runs_the_pushed_commit_and_calls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = tmp.path().join("repos");
    create_repository(
        &repos,
        "app",
        &[(
            "ci/print-head.sh",
            "echo \"HEAD=$(git -C \"$TASKRUNNER_WORKSPACE/app\" rev-parse HEAD)\"\necho \"ref=$WEBHOOK_REF\"\n",
        )],
    );
    let work = repos.join("app-work");
    // The pushed commit, then another one on top: the task must run the first, not the tip.
    let pushed = commit(&work, "feature.txt", "pushed\n");
    let tip = commit(&work, "later.txt", "later\n");
    assert_ne!(pushed, tip);
    let git = GitServer::start(&repos, GIT_TOKEN).await;
    let receiver = Receiver::start(vec![]).await;

    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    set_secret(&data_dir, "webhook-github", HOOK_SECRET);
    set_secret(&data_dir, "app-git-token", GIT_TOKEN);
    let config = tmp.path().join("taskrunner.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks.rules]]\nprovider = \"github\"\nrepository = \"acme/app\"\nref = \"refs/heads/main\"\ntask_file_name = \"ci/print-head.sh\"\ncallback_url = \"{}\"\ngit_secret_name = \"app-git-token\"\ntimeout_seconds = 120\n[webhooks.rules.worker_config]\nworker_size = \"X-Small\"\n",
            receiver.url
        ),
    )
    .unwrap();
    let tasks = tmp.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let server = Server::start(
        &data_dir,
        &tasks,
        &[("TASKRUNNER_CONFIG", config.to_str().unwrap())],
    );

    let body = json!({
        "ref": "refs/heads/main",
        "before": "0".repeat(40),
        "after": pushed,
        "deleted": false,
        "repository": {"full_name": "acme/app", "clone_url": format!("{}/app.git", git.url)},
        "commits": [{"added": ["feature.txt"], "modified": [], "removed": []}],
    })
    .to_string();
    let (name, signature) =
        signature_header(Provider::Github, &Secret::new(HOOK_SECRET), body.as_bytes());
    let http = reqwest::Client::new();
    let deliver = |body: String, signature: String| {
        http.post(format!("{}/webhooks/github", server.url))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", "e2e-delivery-1")
            .header(name, signature)
            .body(body)
            .send()
    };

    let forged = deliver(body.clone(), format!("sha256={}", "0".repeat(64)))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);

    let response = deliver(body.clone(), signature.clone()).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["task_ids"], json!(["gh-e2e-delivery-1"]), "{answer}");

    let callback = eventually(WAIT, "the webhook task's callback", async || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.json()["task_id"] == "gh-e2e-delivery-1")
    })
    .await
    .json();
    assert_eq!(callback["success"], true, "{callback}");
    let logs = callback["logs"].as_str().unwrap();
    assert!(logs.contains(&format!("HEAD={pushed}")), "{logs}");
    assert!(!logs.contains(&tip), "{logs}");
    assert!(logs.contains("ref=refs/heads/main"), "{logs}");

    // A redelivery finds the same task and runs nothing again.
    let again = deliver(body, signature).await.unwrap();
    assert_eq!(again.status().as_u16(), 202);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["task_ids"], json!(["gh-e2e-delivery-1"]));
    let status = server.status("gh-e2e-delivery-1").await;
    assert_eq!(status["repositories"][0]["commit"], pushed.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let callbacks = receiver
        .received()
        .into_iter()
        .filter(|r| r.json()["task_id"] == "gh-e2e-delivery-1")
        .count();
    assert_eq!(callbacks, 1);
    let logs = server.logs();
    assert!(!logs.contains(HOOK_SECRET) && !logs.contains(GIT_TOKEN));
}
