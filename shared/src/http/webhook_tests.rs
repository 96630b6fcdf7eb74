//! The webhook routes through the router, per provider: signatures, dedupe, rules.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::tests::{KEY, app, send};
use super::{AppState, router};
use crate::config::Config;
use crate::embedded::Embedded;
use crate::ports::Orchestrator;
use crate::secret::Secret;
use crate::webhooks::Provider;
use crate::webhooks::rules::WebhookRule;
use crate::webhooks::verify::signature_header;

const SECRET: &str = "hook-secret-0123";
const SHA: &str = "3f786850e387550fdab836ed7e6dc881de23001b";

struct Harness {
    _dir: tempfile::TempDir,
    router: axum::Router,
    embedded: Embedded,
}

fn rule(text: &str) -> WebhookRule {
    toml::from_str(text).unwrap()
}

async fn harness(with_secrets: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.webhooks.rules = vec![
        rule(
            "repository = \"acme/app\"\nref = \"refs/heads/main\"\ntask_file_name = \"ci/test.sh\"\ncallback_url = \"http://127.0.0.1:9/cb\"\n[worker_config]\nworker_size = \"Small\"\n",
        ),
        rule(
            "repository = \"acme/docs\"\nref = \"refs/heads/**\"\npaths = [\"src/**\"]\ntask_file_name = \"ci/docs.sh\"\n",
        ),
    ];
    let (embedded, router) = app(dir.path(), config);
    if with_secrets {
        for provider in Provider::ALL {
            embedded
                .secrets
                .put(&format!("webhook-{provider}"), &Secret::new(SECRET))
                .await
                .unwrap();
        }
    }
    Harness {
        _dir: dir,
        router,
        embedded,
    }
}

/// A push as `provider` sends it: body and headers (event kind and delivery id).
fn push(
    provider: Provider,
    repository: &str,
    git_ref: &str,
    after: &str,
    paths: &[&str],
    delivery: &str,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let commits = json!([{"added": paths, "modified": [], "removed": []}]);
    let (body, mut headers) = match provider {
        Provider::Github | Provider::Gitea => (
            json!({
                "ref": git_ref, "before": "0".repeat(40), "after": after,
                "deleted": after.bytes().all(|b| b == b'0'),
                "repository": {"full_name": repository, "clone_url": format!("https://git.example.com/{repository}.git")},
                "commits": commits,
            }),
            if provider == Provider::Github {
                vec![
                    ("x-github-event", "push".to_owned()),
                    ("x-github-delivery", delivery.to_owned()),
                ]
            } else {
                vec![
                    ("x-forgejo-event", "push".to_owned()),
                    ("x-forgejo-delivery", delivery.to_owned()),
                ]
            },
        ),
        Provider::Gitlab => (
            json!({
                "object_kind": "push", "ref": git_ref, "after": after,
                "checkout_sha": if after.bytes().all(|b| b == b'0') { Value::Null } else { json!(after) },
                "project": {"path_with_namespace": repository, "git_http_url": format!("https://git.example.com/{repository}.git")},
                "commits": commits,
            }),
            vec![
                ("x-gitlab-event", "Push Hook".to_owned()),
                ("x-gitlab-event-uuid", delivery.to_owned()),
            ],
        ),
        Provider::Bitbucket => {
            let name = git_ref.trim_start_matches("refs/heads/");
            let side = json!({"type": "branch", "name": name, "target": {"hash": after}});
            let deleted = after.bytes().all(|b| b == b'0');
            (
                json!({
                    "repository": {"full_name": repository, "links": {"html": {"href": format!("https://git.example.com/{repository}")}}},
                    "push": {"changes": [if deleted {
                        json!({"new": null, "old": side, "closed": true})
                    } else {
                        json!({"new": side, "old": null, "closed": false})
                    }]},
                }),
                vec![
                    ("x-event-key", "repo:push".to_owned()),
                    ("x-request-uuid", delivery.to_owned()),
                ],
            )
        }
    };
    let body = body.to_string().into_bytes();
    let (name, value) = signature_header(provider, &Secret::new(SECRET), &body);
    headers.push((name, value));
    (body, headers)
}

async fn deliver(
    harness: &Harness,
    provider: Provider,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("/webhooks/{provider}"));
    if !headers.iter().any(|(name, _)| *name == "content-type") {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    send(&harness.router, request.body(Body::from(body)).unwrap()).await
}

async fn get(harness: &Harness, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    send(&harness.router, request).await
}

async fn task_count(harness: &Harness) -> usize {
    harness
        .embedded
        .engine
        .list(None, 1000)
        .await
        .unwrap()
        .len()
}

fn message(answer: &Value) -> &str {
    answer["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_signed_push_starts_the_pinned_task_once_per_delivery() {
    for provider in Provider::ALL {
        let harness = harness(true).await;
        let (body, headers) = push(provider, "acme/app", "refs/heads/main", SHA, &[], "d-1");
        let (status, answer) = deliver(&harness, provider, body.clone(), &headers).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{provider}: {answer}");
        assert_eq!(answer["success"], true);
        let id = format!("{}-d-1", provider.task_prefix());
        assert_eq!(answer["task_ids"], json!([id]), "{provider}");

        let (status, view) = get(&harness, &format!("/task-runner/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["task_name"], "ci/test.sh");
        assert_eq!(view["worker_size"], "Small");
        let repository = &view["repositories"][0];
        assert_eq!(repository["commit"], SHA, "{provider}: {view}");
        assert_eq!(repository["branch"], "main");
        assert_eq!(
            repository["remote_url"],
            "https://git.example.com/acme/app.git"
        );

        // The host redelivers: same task, nothing new started.
        let (status, again) = deliver(&harness, provider, body, &headers).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_eq!(again["task_ids"], json!([id]));
        assert_eq!(task_count(&harness).await, 1, "{provider}");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_body_or_signature_is_401_and_starts_nothing() {
    for provider in Provider::ALL {
        let harness = harness(true).await;
        let (body, headers) = push(provider, "acme/app", "refs/heads/main", SHA, &[], "d-2");
        let mut tampered = body.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x01;
        let mut forged = headers.clone();
        let signature = &mut forged.last_mut().unwrap().1;
        let last = signature.pop().unwrap();
        signature.push(if last == '0' { '1' } else { '0' });
        let mut unsigned = headers.clone();
        unsigned.pop();
        let mut cases = vec![(body.clone(), forged), (body.clone(), unsigned)];
        // GitLab sends a token, not a signature: a changed body still carries a valid token.
        if provider != Provider::Gitlab {
            cases.push((tampered, headers.clone()));
        }
        for (body, headers) in cases {
            let (status, answer) = deliver(&harness, provider, body, &headers).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{provider}: {answer}");
            assert_eq!(answer["success"], false);
            assert!(!message(&answer).contains(SECRET));
        }
        assert_eq!(task_count(&harness).await, 0, "{provider}");
    }
}

#[tokio::test]
async fn without_a_stored_secret_the_answer_says_how_to_set_it() {
    let harness = harness(false).await;
    for provider in Provider::ALL {
        let (body, headers) = push(provider, "acme/app", "refs/heads/main", SHA, &[], "d-3");
        let (status, answer) = deliver(&harness, provider, body, &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            message(&answer).contains(&format!("taskrunner secret set webhook-{provider}")),
            "{answer}"
        );
    }
    assert_eq!(task_count(&harness).await, 0);
}

#[tokio::test]
async fn unmatched_pushes_deletions_and_path_filters_get_202_with_the_reason() {
    for provider in Provider::ALL {
        let harness = harness(true).await;
        let zero = "0".repeat(40);
        let cases: [(&str, &str, &str, &[&str], &str); 4] = [
            (
                "acme/other",
                "refs/heads/main",
                SHA,
                &[],
                "repository acme/other",
            ),
            ("acme/app", "refs/heads/dev", SHA, &[], "ref refs/heads/dev"),
            ("acme/app", "refs/heads/main", &zero, &[], "deleted"),
            ("acme/docs", "refs/heads/main", SHA, &["README.md"], "paths"),
        ];
        for (index, (repository, git_ref, after, paths, reason)) in cases.into_iter().enumerate() {
            // Bitbucket lists no files: its path-filter case is refused for that reason.
            let (body, headers) = push(
                provider,
                repository,
                git_ref,
                after,
                paths,
                &format!("n-{index}"),
            );
            let (status, answer) = deliver(&harness, provider, body, &headers).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{provider}: {answer}");
            assert_eq!(answer["task_ids"], json!([]), "{provider}: {answer}");
            assert!(
                message(&answer).contains(reason),
                "{provider}: {answer} should say {reason:?}"
            );
        }
        assert_eq!(task_count(&harness).await, 0, "{provider}");
        // A matching path starts the docs rule (not on Bitbucket, which lists no files).
        if provider != Provider::Bitbucket {
            let (body, headers) = push(
                provider,
                "acme/docs",
                "refs/heads/feature/x",
                SHA,
                &["src/index.md"],
                "p-1",
            );
            let (status, answer) = deliver(&harness, provider, body, &headers).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            assert_eq!(answer["task_ids"].as_array().unwrap().len(), 1, "{answer}");
        }
    }
}

#[tokio::test]
async fn github_ping_other_events_and_form_encoded_payloads() {
    let harness = harness(true).await;
    let secret = Secret::new(SECRET);
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let (name, signature) = signature_header(Provider::Github, &secret, &ping);
    let headers = [
        ("x-github-event", "ping".to_owned()),
        ("x-github-delivery", "p".to_owned()),
        (name, signature),
    ];
    let (status, _) = deliver(&harness, Provider::Github, ping.clone(), &headers).await;
    assert_eq!(status, StatusCode::OK);
    let mut issues = headers.clone();
    issues[0].1 = "issues".into();
    let (status, answer) = deliver(&harness, Provider::Github, ping, &issues).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(message(&answer).contains("issues"), "{answer}");

    let (json_body, mut headers) = push(
        Provider::Github,
        "acme/app",
        "refs/heads/main",
        SHA,
        &[],
        "form-1",
    );
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json_body).unwrap())
        .finish();
    let form = form.into_bytes();
    headers.pop();
    let (name, signature) = signature_header(Provider::Github, &secret, &form);
    headers.push((name, signature));
    headers.push((
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    ));
    let (status, answer) = deliver(&harness, Provider::Github, form, &headers).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["task_ids"], json!(["gh-form-1"]));
    let (_, view) = get(&harness, "/task-runner/gh-form-1").await;
    assert_eq!(view["repositories"][0]["commit"], SHA, "{view}");
}

#[tokio::test]
async fn one_delivery_matching_two_rules_starts_two_tasks() {
    let harness = harness(true).await;
    let mut config = (*harness.embedded.config).clone();
    config.webhooks.rules.push(rule(
        "provider = \"github\"\nrepository = \"acme/*\"\nref = \"refs/heads/main\"\ntask_file_name = \"ci/lint.py\"\n",
    ));
    let mut service = harness.embedded.service.clone();
    service.config = Arc::new(config);
    let router = router(Arc::new(AppState {
        api_keys: harness.embedded.api_keys(Some(Secret::new(KEY))),
        service,
        public_url: Some("http://tr.test".into()),
    }));
    let harness = Harness { router, ..harness };
    let (body, headers) = push(
        Provider::Github,
        "acme/app",
        "refs/heads/main",
        SHA,
        &[],
        "two",
    );
    let (status, answer) = deliver(&harness, Provider::Github, body, &headers).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        answer["task_ids"],
        json!(["gh-two-0", "gh-two-2"]),
        "{answer}"
    );
}
