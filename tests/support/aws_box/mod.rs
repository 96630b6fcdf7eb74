//! The AWS deployment on this machine: `moto_server` runs the real
//! `infra/state-machine.asl.json` (its Step Functions interpreter) and holds Secrets Manager,
//! CloudWatch Logs and the executions; its Lambda calls go to `MOTO_PORT`, which is the
//! "front" here: it runs the real function binaries behind the Lambda Invoke API
//! ([`lambda`]), answers CodeBuild ([`codebuild`]) and passes everything else to moto. An
//! HTTP API stand-in ([`gateway`]) turns plain HTTP requests into API Gateway v2 events for
//! the `api` function, as the template's `$default` route does. The builds' EventBridge
//! events reach the `worker-events` function through [`events`], as the template's rule
//! delivers them.

pub mod codebuild;
pub mod events;
pub mod gateway;
pub mod lambda;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use codebuild::{CodeBuild, aws_json};
use events::EventBus;
use lambda::Function;

/// The functions of `template.yaml`, by binary name.
pub const FUNCTIONS: &[&str] = &[
    "api",
    "submit",
    "poll-worker",
    "finish-and-callback",
    "worker-events",
    "cleanup",
];
/// The CodeBuild project and its log group, as the template names them in the functions' env.
pub const PROJECT: &str = "taskrunner-workers";
/// The workers' log group.
pub const LOG_GROUP: &str = "/taskrunner/workers";
/// The stack's name (the state machine is `<stack>-tasks`, as the template names it).
pub const STACK: &str = "taskrunner";
/// The API key the deployment's `api-key` secret holds.
pub const API_KEY: &str = "box-api-key";
/// The bucket of the tasks directory (the template's `TasksBucket`); tasks under `tasks/`.
pub const TASKS_BUCKET: &str = "taskrunner-tasks";
/// The task line's table (the template's `TaskLineTable`).
pub const LINE_TABLE: &str = "taskrunner-line";
/// Secrets Manager name prefix (the template's `SecretPrefix` default).
pub const SECRET_PREFIX: &str = "taskrunner/";

/// A running box; everything stops when it is dropped.
pub struct AwsBox {
    _moto: super::moto::Server,
    /// moto's own endpoint (for the test's direct reads).
    pub moto_url: String,
    /// The front (`AWS_ENDPOINT_URL` of the functions).
    pub front_url: String,
    /// The HTTP API's base URL.
    pub api_url: String,
    /// The state machine running the real ASL.
    pub state_machine_arn: String,
    /// The CodeBuild stand-in.
    pub codebuild: Arc<CodeBuild>,
    /// The rule delivering the builds' events to `worker-events`.
    pub events: Arc<EventBus>,
    functions: HashMap<String, Arc<Function>>,
    late_waits: Arc<Mutex<HashSet<String>>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

struct Front {
    moto: String,
    http: reqwest::Client,
    codebuild: Arc<CodeBuild>,
    functions: HashMap<String, Arc<Function>>,
    late_waits: Arc<Mutex<HashSet<String>>>,
}

impl AwsBox {
    /// Starts moto, the front and the HTTP API, and creates the deployment's resources.
    /// `binaries` holds the function binaries; `gitconfig` goes to each build's `$HOME`.
    pub async fn start(binaries: &Path, gitconfig: &str, extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let front_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_url = format!("http://{}", front_listener.local_addr().unwrap());
        let front_port = front_listener.local_addr().unwrap().port().to_string();
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", api_listener.local_addr().unwrap());
        let (moto, moto_url) = super::moto::spawn(&[("MOTO_PORT", front_port.as_str())]);
        let http = reqwest::Client::new();
        let answer = http
            .post(format!("{moto_url}/moto-api/config"))
            .json(&json!({"stepfunctions": {"execute_state_machine": true}}))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "moto config: {answer:?}");

        let state_machine_arn = create_state_machine(&http, &moto_url).await;
        let (status, answer) = aws_json(
            &http,
            &moto_url,
            "Logs_20140328.CreateLogGroup",
            &json!({"logGroupName": LOG_GROUP}),
        )
        .await;
        assert_eq!(status, 200, "CreateLogGroup: {answer}");
        let (status, answer) = aws_json(
            &http,
            &moto_url,
            "DynamoDB_20120810.CreateTable",
            &json!({"TableName": LINE_TABLE, "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}]}),
        )
        .await;
        assert_eq!(status, 200, "CreateTable: {answer}");

        let codebuild = CodeBuild::new(&moto_url, &dir.path().join("builds"), LOG_GROUP, gitconfig);
        let mut envs = template_env(&front_url, &api_url, &state_machine_arn, extra_env);
        let mut functions = HashMap::new();
        for name in FUNCTIONS {
            let binary = binaries.join(name);
            assert!(
                binary.exists(),
                "{} is missing: build the functions first (`cargo build --workspace --bins`; \
                 `cargo test --workspace` does it)",
                binary.display()
            );
            let env = envs.remove(*name).unwrap();
            let log = dir.path().join(format!("{name}.log"));
            functions.insert(
                (*name).to_owned(),
                Function::start(name, binary, env, log).await,
            );
        }
        let events = EventBus::start(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
            PROJECT,
            Arc::clone(&functions[events::FUNCTION]),
        );
        codebuild.emit_events_to(Arc::clone(&events));
        let late_waits = Arc::new(Mutex::new(HashSet::new()));
        let front = Arc::new(Front {
            moto: moto_url.clone(),
            http: http.clone(),
            codebuild: Arc::clone(&codebuild),
            functions: functions.clone(),
            late_waits: Arc::clone(&late_waits),
        });
        let app = Router::new().fallback(serve_front).with_state(front);
        tokio::spawn(async move { axum::serve(front_listener, app).await });
        gateway::serve(api_listener, Arc::clone(&functions["api"]));
        let aws = Self {
            _moto: moto,
            moto_url,
            front_url,
            api_url,
            state_machine_arn,
            codebuild,
            events,
            functions,
            late_waits,
            http,
            _dir: dir,
        };
        aws.create_secret("api-key", API_KEY).await;
        aws.s3_put(TASKS_BUCKET, None).await;
        aws
    }

    /// Creates the secret `<prefix><name>` in Secrets Manager.
    pub async fn create_secret(&self, name: &str, value: &str) {
        let (status, answer) = aws_json(
            &self.http,
            &self.moto_url,
            "secretsmanager.CreateSecret",
            &json!({"Name": format!("{SECRET_PREFIX}{name}"), "SecretString": value}),
        )
        .await;
        assert_eq!(status, 200, "CreateSecret: {answer}");
    }

    /// Puts a file into the tasks directory, as `aws s3 sync ./tasks s3://BUCKET/tasks/` does.
    pub async fn put_task(&self, path: &str, text: &str) {
        self.s3_put(&format!("{TASKS_BUCKET}/tasks/{path}"), Some(text))
            .await;
    }

    /// Ships the workers' `taskrunner` CLI, as the deployment uploads it to
    /// `s3://BUCKET/cli/taskrunner`.
    pub async fn put_cli(&self, text: &str) {
        self.s3_put(&format!("{TASKS_BUCKET}/cli/taskrunner"), Some(text))
            .await;
    }

    /// Creates a bucket (`body` None) or an object.
    async fn s3_put(&self, path: &str, body: Option<&str>) {
        let answer = self
            .http
            .put(format!("{}/{path}", self.moto_url))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20261206/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.unwrap_or_default().to_owned())
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "PUT {path}: {answer:?}");
    }

    /// One Step Functions call to moto.
    pub async fn sfn(&self, operation: &str, body: &Value) -> Value {
        let (status, answer) = aws_json(
            &self.http,
            &self.moto_url,
            &format!("AWSStepFunctions.{operation}"),
            body,
        )
        .await;
        assert_eq!(status, 200, "{operation}: {answer}");
        answer
    }

    /// Stops the task's execution (`StopExecution`), as an operator would. moto leaves an
    /// execution stopped in a `.waitForTaskToken` state RUNNING until the wait ends, where
    /// Step Functions aborts it at once; so the box then ends the wait with the token the
    /// wait kept (`SendTaskFailure`), and moto, finding the execution stopped, ends it
    /// there (as FAILED, without running another state).
    pub async fn stop_execution(&self, task_id: &str) {
        self.sfn(
            "StopExecution",
            &json!({"executionArn": self.execution_arn(task_id)}),
        )
        .await;
        let (status, item) = aws_json(
            &self.http,
            &self.moto_url,
            "DynamoDB_20120810.GetItem",
            &json!({"TableName": LINE_TABLE, "Key": {"pk": {"S": format!("token#{task_id}")}},
                    "ConsistentRead": true}),
        )
        .await;
        assert_eq!(status, 200, "GetItem: {item}");
        if let Some(token) = item["Item"]["token"]["S"].as_str() {
            aws_json(
                &self.http,
                &self.moto_url,
                "AWSStepFunctions.SendTaskFailure",
                &json!({"taskToken": token, "error": "States.Aborted"}),
            )
            .await;
        }
        ended_after_stop(self, task_id).await;
    }

    /// The ARN of the task's execution (named by its task id).
    pub fn execution_arn(&self, task_id: &str) -> String {
        self.state_machine_arn
            .replace(":stateMachine:", ":execution:")
            + ":"
            + task_id
    }

    /// The full history of the task's execution.
    pub async fn history(&self, task_id: &str) -> Value {
        self.sfn(
            "GetExecutionHistory",
            &json!({"executionArn": self.execution_arn(task_id), "maxResults": 1000}),
        )
        .await
    }

    /// The events of the task's execution, oldest first.
    async fn events(&self, task_id: &str) -> Vec<Value> {
        let history = self.history(task_id).await;
        history["events"].as_array().cloned().unwrap_or_default()
    }

    /// The states the task's execution entered, in order.
    pub async fn states_entered(&self, task_id: &str) -> Vec<String> {
        self.events(task_id)
            .await
            .iter()
            .filter_map(|e| e["stateEnteredEventDetails"]["name"].as_str())
            .map(str::to_owned)
            .collect()
    }

    /// When the task's execution first entered `state` (seconds since the epoch).
    pub async fn entered_at(&self, task_id: &str, state: &str) -> Option<f64> {
        self.events(task_id)
            .await
            .iter()
            .find(|e| e["stateEnteredEventDetails"]["name"] == state)
            .and_then(|e| e["timestamp"].as_f64())
    }

    /// The task tokens Step Functions handed the task's waits (in their scheduled
    /// parameters, `Payload.task_token`).
    pub async fn task_tokens(&self, task_id: &str) -> Vec<String> {
        self.events(task_id)
            .await
            .iter()
            .filter_map(|e| e["taskScheduledEventDetails"]["parameters"].as_str())
            .filter_map(|parameters| serde_json::from_str::<Value>(parameters).ok())
            .filter_map(|parameters| {
                parameters["Payload"]["task_token"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Every line of every worker log stream in moto.
    pub async fn worker_logs(&self) -> String {
        let (_, streams) = aws_json(
            &self.http,
            &self.moto_url,
            "Logs_20140328.DescribeLogStreams",
            &json!({"logGroupName": LOG_GROUP}),
        )
        .await;
        let mut text = String::new();
        for stream in streams["logStreams"].as_array().into_iter().flatten() {
            let (_, events) = aws_json(
                &self.http,
                &self.moto_url,
                "Logs_20140328.GetLogEvents",
                &json!({"logGroupName": LOG_GROUP, "logStreamName": stream["logStreamName"], "startFromHead": true}),
            )
            .await;
            for event in events["events"].as_array().into_iter().flatten() {
                text.push_str(event["message"].as_str().unwrap_or_default());
                text.push('\n');
            }
        }
        text
    }

    /// Everything the function processes wrote, by function.
    pub fn function_logs(&self) -> Vec<(String, String)> {
        let mut logs: Vec<(String, String)> = self
            .functions
            .iter()
            .map(|(name, f)| (name.clone(), f.output()))
            .collect();
        logs.sort();
        logs
    }

    /// Makes `task_id`'s wait keep its task token late: the state machine's call of
    /// poll-worker with the token is held until the task's build has ended and its events
    /// were delivered, so the worker's end comes before any token is kept (the race the
    /// wait's own check of the worker covers).
    pub fn keep_token_late(&self, task_id: &str) {
        self.late_waits.lock().unwrap().insert(task_id.to_owned());
    }

    /// Invokes a function directly, as EventBridge or the console would.
    pub async fn invoke(&self, name: &str, event: Value) -> Value {
        let answer = self.functions[name]
            .invoke(Bytes::from(event.to_string()))
            .await;
        lambda::json(&answer)
    }
}

impl Drop for AwsBox {
    fn drop(&mut self) {
        // AWS_BOX_KEEP=1 keeps the functions' logs and the builds for a look afterwards.
        if std::env::var_os("AWS_BOX_KEEP").is_some() {
            eprintln!("aws_box: kept {}", self._dir.path().display());
            std::mem::forget(std::mem::replace(
                &mut self._dir,
                tempfile::tempdir().unwrap(),
            ));
        }
        self.codebuild.stop_all();
        for function in self.functions.values() {
            function.stop();
        }
    }
}

async fn ended_after_stop(aws: &AwsBox, task_id: &str) {
    super::eventually(
        std::time::Duration::from_secs(30),
        &format!("{task_id}'s execution to end"),
        async || {
            let execution = aws
                .sfn(
                    "DescribeExecution",
                    &json!({"executionArn": aws.execution_arn(task_id)}),
                )
                .await;
            (execution["status"] != "RUNNING").then_some(())
        },
    )
    .await;
}

/// The event EventBridge sends the cleanup function on its schedule.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0", "id": "box-sweep", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": chrono::Utc::now().to_rfc3339(), "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/taskrunner-sweep"], "detail": {}
    })
}

/// The environment `template.yaml` gives each function (by binary name), its `Globals` and
/// its own `Environment`, with `!Ref`/`!Sub` resolved to this box's resources and the
/// parameters' defaults; then the box's own settings (`AWS_ENDPOINT_URL`, the API's URL, a
/// loopback callback receiver over HTTP) and `extra`.
fn template_env(
    front: &str,
    api_url: &str,
    state_machine_arn: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, Vec<(String, String)>> {
    let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    // CloudFormation's short tags become {"Ref": ...}, {"Fn::Sub": ...}.
    let output = std::process::Command::new("python3")
        .arg(template_script())
        .arg("env")
        .arg(&template)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "reading template.yaml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    let resolve = |name: &str| -> String {
        match name {
            "TaskStateMachine" => state_machine_arn.to_owned(),
            "WorkerProject" => PROJECT.to_owned(),
            "WorkerLogGroup" => LOG_GROUP.to_owned(),
            "TaskLineTable" => LINE_TABLE.to_owned(),
            "TasksBucket" => TASKS_BUCKET.to_owned(),
            "HttpApi" => "box".to_owned(),
            "AWS::Region" => "us-east-1".to_owned(),
            "AWS::AccountId" => "123456789012".to_owned(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            "AWS::StackName" => STACK.to_owned(),
            parameter => match &doc["parameters"][parameter] {
                Value::String(value) => value.clone(),
                Value::Null => panic!("template.yaml: the box cannot resolve {name:?}"),
                other => other.to_string(),
            },
        }
    };
    let value = |raw: &Value| -> String {
        if let Some(name) = raw["Ref"].as_str() {
            return resolve(name);
        }
        if let Some(text) = raw["Fn::Sub"].as_str() {
            let mut text = text.to_owned();
            while let Some(start) = text.find("${") {
                let end = start + text[start..].find('}').unwrap();
                let name = text[start + 2..end].to_owned();
                text.replace_range(start..=end, &resolve(&name));
            }
            return text;
        }
        match raw {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    };
    let mut all = HashMap::new();
    for name in FUNCTIONS {
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, key: &str, raw: String| {
            env.retain(|(k, _)| k != key);
            env.push((key.to_owned(), raw));
        };
        for (key, raw) in doc["globals"].as_object().unwrap() {
            set(&mut env, key, value(raw));
        }
        let own = &doc["functions"][*name];
        assert!(
            own.is_object() || own.is_null(),
            "template.yaml has no function {name}"
        );
        for (key, raw) in own.as_object().into_iter().flatten() {
            set(&mut env, key, value(raw));
        }
        set(&mut env, "AWS_ENDPOINT_URL", front.to_owned());
        if env.iter().any(|(k, _)| k == "TASKRUNNER_TASK_API_URL") {
            // The API's public URL is this box's HTTP API stand-in.
            set(&mut env, "TASKRUNNER_TASK_API_URL", api_url.to_owned());
        }
        // The test's callback receiver is on loopback, over plain HTTP.
        set(
            &mut env,
            "TASKRUNNER_CALLBACK_ALLOW_LOOPBACK",
            "true".to_owned(),
        );
        set(
            &mut env,
            "TASKRUNNER_CALLBACK_REQUIRE_HTTPS",
            "false".to_owned(),
        );
        for (key, raw) in extra {
            set(&mut env, key, (*raw).to_owned());
        }
        all.insert((*name).to_owned(), env);
    }
    all
}

/// `tests/support/template.py`, which reads template.yaml for the box.
pub fn template_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/support/template.py")
}

/// Creates the state machine from the real ASL file, its Lambda ARNs substituted as
/// `template.yaml`'s `DefinitionSubstitutions` do.
async fn create_state_machine(http: &reqwest::Client, moto: &str) -> String {
    let asl = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/state-machine.asl.json"),
    )
    .unwrap();
    // `!Ref <Function>.Alias`: the function's "live" alias.
    let arn = |name: &str| format!("arn:aws:lambda:us-east-1:123456789012:function:{name}:live");
    let definition = asl
        .replace("${SubmitFunctionArn}", &arn("submit"))
        .replace("${PollWorkerFunctionArn}", &arn("poll-worker"))
        .replace(
            "${FinishAndCallbackFunctionArn}",
            &arn("finish-and-callback"),
        );
    let (status, answer) = aws_json(
        http,
        moto,
        "AWSStepFunctions.CreateStateMachine",
        &json!({"name": format!("{STACK}-tasks"), "definition": definition,
                "roleArn": "arn:aws:iam::123456789012:role/taskrunner-states", "type": "STANDARD"}),
    )
    .await;
    assert_eq!(status, 200, "CreateStateMachine: {answer}");
    answer["stateMachineArn"].as_str().unwrap().to_owned()
}

async fn serve_front(State(front): State<Arc<Front>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path();
    if let Some(name) = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|rest| rest.strip_suffix("/invocations"))
    {
        let name = lambda::function_name(name);
        hold_late_wait(&front, &body).await;
        let Some(function) = front.functions.get(&name) else {
            return (
                axum::http::StatusCode::NOT_FOUND,
                [("x-amzn-errortype", "ResourceNotFoundException")],
                json!({"Type": "User", "message": format!("Function not found: {name}")})
                    .to_string(),
            )
                .into_response();
        };
        return lambda::invoke_response(function.invoke(body).await);
    }
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(operation) = target.strip_prefix("CodeBuild_20161006.") {
        let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, answer) = front.codebuild.call(operation, &input).await;
        let mut headers = vec![("content-type", "application/x-amz-json-1.1".to_owned())];
        if let Some(kind) = answer["__type"].as_str() {
            headers.push(("x-amzn-errortype", kind.to_owned()));
        }
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        return response.body(Body::from(answer.to_string())).unwrap();
    }
    proxy(&front, parts, body).await
}

/// Holds a call that hands over a task token (`task_token` in the payload) of a task marked
/// by [`AwsBox::keep_token_late`] until its build ended and its events had time to arrive.
async fn hold_late_wait(front: &Front, body: &Bytes) {
    let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(task_id) = payload["input"]["task"]["task_id"].as_str() else {
        return;
    };
    if payload.get("task_token").is_none() || !front.late_waits.lock().unwrap().contains(task_id) {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while front.codebuild.build_end(task_id).is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The build's events were emitted at its end; their delivery takes a function call.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
}

async fn proxy(front: &Front, parts: axum::http::request::Parts, body: Bytes) -> Response {
    let url = format!(
        "{}{}",
        front.moto,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = front.http.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(err) => {
            return (axum::http::StatusCode::BAD_GATEWAY, format!("moto: {err}")).into_response();
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "transfer-encoding" && name != "content-length" && name != "connection" {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}
