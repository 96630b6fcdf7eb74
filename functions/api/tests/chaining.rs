//! Task tokens in the AWS mode: the `api` binary under a Lambda Runtime API, its AWS side on
//! moto, verifies a task token with the key kept in Secrets Manager and applies the same
//! scope as the embedded mode.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use std::sync::Arc;

use lambda_runtime::{http_response, invoke};
use serde_json::{Value, json};
use taskrunner::adapters::memory::MemorySecretStore;
use taskrunner::auth::task_token::{TASK_TOKEN_KEY_SECRET, TaskTokens};
use taskrunner::ports::SecretStore;
use taskrunner::secret::Secret;
use taskrunner::task::TaskId;

const BIN: &str = env!("CARGO_BIN_EXE_api");
const KEY: &str = "lambda-test-key";
const SIGNING_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

async fn call(
    moto: &moto::Moto,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> (u64, Value) {
    let body = body.map(Value::to_string);
    let event = events::default_route_request(method, path, Some(bearer), body.as_deref());
    http_response(invoke(BIN, &moto.env(), event).await.answer)
}

/// A token for `task_id` signed with `key`, as a worker of a deployment with that key mints it.
async fn token_for(task_id: &str, key: &str) -> String {
    let store = Arc::new(MemorySecretStore::default());
    store
        .put(TASK_TOKEN_KEY_SECRET, &Secret::new(key))
        .await
        .unwrap();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    TaskTokens::new(store)
        .mint(&TaskId::parse(task_id).unwrap(), expires)
        .await
        .unwrap()
        .expose()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_function_verifies_task_tokens_and_their_scope() {
    let moto = moto::Moto::start();
    moto.boto3(
        &format!(
            "sm = boto3.client('secretsmanager', **kw)\nsm.create_secret(Name='taskrunner/{TASK_TOKEN_KEY_SECRET}', SecretString='{SIGNING_KEY}')\nsm.create_secret(Name='taskrunner/ALLOWED', SecretString='v')"
        ),
    );
    let root = |id: &str| {
        json!({"task_id": id, "task_file_name": "deploy.sh",
            "worker_config": {"personal_secrets": ["ALLOWED"]}})
    };
    for id in ["parent", "other"] {
        let (code, body) = call(&moto, "POST", "/task-runner", KEY, Some(&root(id))).await;
        assert_eq!(code, 202, "{body}");
    }
    let token = token_for("parent", SIGNING_KEY).await;

    let (code, body) = call(&moto, "GET", "/task-runner", &token, None).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = call(&moto, "GET", "/task-runner/other/logs", &token, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("only its own descendants")
    );

    let mut child = json!({"task_id": "kid", "task_file_name": "step.sh",
        "worker_config": {"personal_secrets": ["OTHER"]}});
    let (code, body) = call(&moto, "POST", "/task-runner", &token, Some(&child)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("secret \"OTHER\"")
    );
    child["worker_config"]["personal_secrets"] = json!(["ALLOWED"]);
    let (code, body) = call(&moto, "POST", "/task-runner", &token, Some(&child)).await;
    assert_eq!(
        (code, &body["task_id"]),
        (202, &json!("parent.kid")),
        "{body}"
    );
    let (code, status) = call(&moto, "GET", "/task-runner/parent.kid", &token, None).await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["parent_task_id"], "parent");
    let (_, parent) = call(&moto, "GET", "/task-runner/parent", KEY, None).await;
    assert_eq!(parent["children"][0]["task_id"], "parent.kid", "{parent}");

    let foreign = token_for("other", "another-deployment's-key").await;
    let (code, body) = call(&moto, "GET", "/task-runner/other.x", &foreign, None).await;
    assert_eq!(code, 401, "{body}");

    moto.boto3(
        &format!(
            "sfn = boto3.client('stepfunctions', **kw)\nsfn.stop_execution(executionArn='{}'.replace(':stateMachine:', ':execution:') + ':parent')",
            moto.state_machine_arn
        ),
    );
    let (code, body) = call(&moto, "GET", "/task-runner/parent.kid", &token, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("task ended"),
        "{body}"
    );
}
