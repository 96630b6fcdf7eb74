use std::path::PathBuf;

use serde_json::json;

use super::*;

fn accept_all(_: &str) -> Result<(), String> {
    Ok(())
}

fn check(body: &[u8]) -> Result<Accepted, RequestError> {
    let config = Config::default();
    let base = PathBuf::from("/");
    let rules = Rules {
        config: &config,
        allow_local_repositories: true,
        base_dir: &base,
        check_callback_url: &accept_all,
        concurrency_keys: true,
    };
    parse_request(body, &rules)
}

fn minimal() -> Value {
    json!({"task_id": "t-1", "task_file_name": "hello.py", "worker_config": {}})
}

fn refused(body: Value) -> RequestError {
    check(body.to_string().as_bytes()).expect_err("the request should be refused")
}

#[test]
fn the_original_clients_exact_json_is_accepted() {
    let body = include_bytes!("../../../examples/original-client.json");
    let accepted = check(body).expect("accepted");
    let spec = &accepted.spec;
    assert_eq!(spec.task_id.as_str(), "model-deployment-task-1");
    assert_eq!(spec.worker.name, "X-Small");
    assert_eq!(spec.env["MODEL_NAME"], "sample-model");
    assert_eq!(
        spec.secrets,
        vec![SecretEnv {
            secret: "MY_GIT_SECRET".into(),
            env: "MY_GIT_SECRET".into()
        }]
    );
    assert_eq!(spec.git.len(), 1);
    assert_eq!(
        spec.git[0].remote_url,
        "https://github.com/your-org/your-model-repo.git"
    );
    assert_eq!(spec.git[0].secret_name.as_deref(), Some("MY_GIT_SECRET"));
    assert_eq!(spec.git[0].local_path, "your-model-repo");
    assert!(!spec.terminate_on_completion);
    assert_eq!(spec.timeout_seconds, 6 * 3600);
}

#[test]
fn a_json_string_holding_the_request_is_the_same_request() {
    let body = include_str!("../../../examples/original-client.json");
    let double = serde_json::to_string(body).unwrap();
    let once = check(body.as_bytes()).unwrap();
    let twice = check(double.as_bytes()).unwrap();
    assert_eq!(once.spec, twice.spec);
    assert_eq!(once.digest(), twice.digest());
}

#[test]
fn explicit_fields_win_over_additional_params() {
    let params = base64::engine::general_purpose::STANDARD.encode(
        json!({"env_variables": {"A": "from-params"}, "PRT_LOG_LEVEL": "debug", "startup_script_b64": base64::engine::general_purpose::STANDARD.encode("echo hi")}).to_string(),
    );
    let accepted = check(
        json!({"task_id": "t", "task_file_name": "a.sh", "worker_config": {
            "env_variables": {"B": 2, "C": true, "D": 1.5}, "additional_params": params}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        accepted.spec.env.get("A"),
        None,
        "explicit env_variables win as a whole"
    );
    assert_eq!(accepted.spec.env["B"], "2");
    assert_eq!(accepted.spec.env["C"], "True");
    assert_eq!(accepted.spec.env["D"], "1.5");
    assert_eq!(accepted.spec.log_level.as_deref(), Some("DEBUG"));
    assert_eq!(accepted.spec.startup_script.as_deref(), Some("echo hi"));
}

#[test]
fn secrets_map_to_environment_variables() {
    let accepted = check(
        json!({"task_id": "t", "task_file_name": "a.sh", "worker_config": {
            "personal_secrets": ["TOKEN", "db-pass:DB_PASSWORD"], "shared_secrets": ["SHARED"]}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let envs: Vec<_> = accepted
        .spec
        .secrets
        .iter()
        .map(|s| (s.secret.as_str(), s.env.as_str()))
        .collect();
    assert_eq!(
        envs,
        vec![
            ("TOKEN", "TOKEN"),
            ("db-pass", "DB_PASSWORD"),
            ("SHARED", "SHARED")
        ]
    );
    let err = refused(
        json!({"task_id": "t", "task_file_name": "a.sh", "worker_config": {"personal_secrets": ["db-pass"]}}),
    );
    assert!(
        err.message.contains("worker_config.personal_secrets[0]")
            && err.message.contains("db-pass:ENV_NAME"),
        "{}",
        err.message
    );
}

#[test]
fn every_refusal_names_its_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"task_file_name": "a.py", "worker_config": {}}),
            "task_id",
        ),
        (
            json!({"task_id": "t", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py"}),
            "worker_config",
        ),
        (
            json!({"task_id": "bad id", "task_file_name": "a.py", "worker_config": {}}),
            "task_id",
        ),
        (
            json!({"task_id": "t", "task_file_name": "../x.py", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "t", "task_file_name": "/abs/x.py", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "t", "task_file_name": "x.rb", "worker_config": {}}),
            "task_file_name",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_size": "Huge"}}),
            "worker_config.worker_size",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_size": "GPU"}}),
            "worker_config.worker_size",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_image": "ghcr.io/x"}}),
            "worker_config.worker_image",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"distributed_config": {"job_type": "spark"}}}),
            "worker_config.distributed_config",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"refresh_token": "x"}}),
            "worker_config.refresh_token",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"colour": "red"}}),
            "worker_config.colour",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"env_variables": {"A": [1]}}}),
            "worker_config.env_variables.A",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "https://tok:x@host/r.git"}]}}),
            "worker_config.git_configs[0].remote_url",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "http://example.com/r.git"}]}}),
            "worker_config.git_configs[0].remote_url",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "https://h/r.git", "save_secret": true}]}}),
            "worker_config.git_configs[0].save_secret",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "https://h/r.git", "local_path": "../x"}]}}),
            "worker_config.git_configs[0].local_path",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"additional_params": "%%%"}}),
            "worker_config.additional_params",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {}, "timeout_seconds": 0}),
            "timeout_seconds",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {}, "callback_url_token": "x"}),
            "callback_url_token",
        ),
        (
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {}, "surprise": 1}),
            "surprise",
        ),
    ];
    for (body, field) in cases {
        let err = refused(body.clone());
        assert_eq!(err.status, 422, "{body}: {}", err.message);
        assert!(
            err.message.contains(field),
            "{body}: message {:?} should name {field}",
            err.message
        );
    }
}

#[test]
fn malformed_json_is_a_400() {
    let err = check(b"{\"task_id\": ").unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message.contains("not valid JSON"), "{}", err.message);
}

#[test]
fn unknown_size_lists_the_known_ones() {
    let err = refused(
        json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"worker_size": "Huge"}}),
    );
    assert!(
        err.message.contains("X-Small") && err.message.contains("2X-Large"),
        "{}",
        err.message
    );
}

#[test]
fn same_request_same_digest_different_request_different_digest() {
    let a = check(minimal().to_string().as_bytes()).unwrap();
    let b = check(minimal().to_string().as_bytes()).unwrap();
    let mut other = minimal();
    other["task_file_name"] = json!("other.py");
    let c = check(other.to_string().as_bytes()).unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn local_paths_become_file_urls() {
    let accepted = check(
        json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "tmp"}]}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(accepted.spec.git[0].remote_url, "file:///tmp");
    assert_eq!(accepted.spec.git[0].local_path, "tmp");
}

#[test]
fn concurrency_keys_are_checked() {
    let mut body = minimal();
    body["concurrency_key"] = json!("repo:org/app");
    body["cancel_in_progress"] = json!(true);
    let accepted = check(body.to_string().as_bytes()).unwrap();
    assert_eq!(
        accepted.spec.concurrency_key.as_deref(),
        Some("repo:org/app")
    );
    assert!(accepted.spec.cancel_in_progress);
    let mut lone = minimal();
    lone["cancel_in_progress"] = json!(true);
    assert!(refused(lone).message.contains("cancel_in_progress"));
    let mut bad = minimal();
    bad["concurrency_key"] = json!("a b");
    assert!(refused(bad).message.contains("concurrency_key"));
}

#[test]
fn a_commit_pins_the_checkout_and_must_be_a_full_id() {
    let sha = "0123456789abcdef0123456789ABCDEF01234567";
    let accepted = check(
        json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "https://git.example.com/a.git", "branch": "main", "commit": sha}]}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        accepted.spec.git[0].commit.as_deref(),
        Some(sha.to_ascii_lowercase().as_str())
    );
    for bad in ["abc123", "main", &"g".repeat(40)] {
        let err = refused(
            json!({"task_id": "t", "task_file_name": "a.py", "worker_config": {"git_configs": [{"remote_url": "https://git.example.com/a.git", "commit": bad}]}}),
        );
        assert!(
            err.message.contains("git_configs[0].commit"),
            "{}",
            err.message
        );
    }
}
