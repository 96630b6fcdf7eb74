//! A CodeBuild stand-in (moto's CodeBuild never runs anything): StartBuild, BatchGetBuilds,
//! StopBuild and ListBuildsForProject over the awsJson protocol. A build runs the phases of
//! the `buildspecOverride` it was started with as local processes, one process group per
//! command, with `SECRETS_MANAGER` variables resolved from moto's Secrets Manager (their
//! values masked as `***` in the log, as CodeBuild does), and streams its output to moto's
//! CloudWatch Logs, `[Container]` lines included.
//!
//! Where it differs from CodeBuild, on purpose: each build gets its own directory in place of
//! a container (the buildspec's `/tmp/taskrunner` is rewritten to it, since builds share this
//! machine's `/tmp`), its own `$HOME` (whose `.gitconfig` the test may fill), and a phase's
//! output reaches the log before the phase's status does (CodeBuild's log delivery can lag).
//!
//! Like CodeBuild, a build emits EventBridge events in the documented shape: a `CodeBuild Build
//! State Change` when it starts and when it ends, a `CodeBuild Build Phase Change` as each phase
//! completes; [`events::EventBus`](super::events::EventBus) delivers those the rule matches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::events::EventBus;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[derive(Clone)]
struct Phase {
    kind: &'static str,
    status: Option<String>,
    start: f64,
    end: Option<f64>,
    context: Option<(String, String)>,
}

struct BuildState {
    status: String,
    phases: Vec<Phase>,
    end: Option<f64>,
    /// The process group of the command running now.
    group: Option<i32>,
    /// `STOPPED` or `TIMED_OUT` once asked to end.
    ending: Option<&'static str>,
}

struct Build {
    id: String,
    number: u64,
    project: String,
    start: f64,
    compute_type: String,
    timeout_minutes: u64,
    env: Vec<Value>,
    secondary_sources: Vec<Value>,
    stream: String,
    state: Mutex<BuildState>,
    events: Option<Arc<EventBus>>,
}

/// Event times as CodeBuild writes them: `Dec 6, 2026 4:12:29 PM`.
fn event_time(at: f64) -> String {
    chrono::DateTime::from_timestamp_millis((at * 1000.0) as i64)
        .unwrap_or_default()
        .format("%b %-d, %Y %-I:%M:%S %p")
        .to_string()
}

impl Build {
    /// The build's `TASKRUNNER_TASK_ID`, as the event carries it.
    fn task_id(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|v| v["name"] == "TASKRUNNER_TASK_ID")
            .and_then(|v| v["value"].as_str())
    }

    /// An EventBridge event about this build, in the shape the CodeBuild user guide documents
    /// (sample-build-notifications-ref): `detail` holds the build's status or the completed
    /// phase (`fields`) and `additional-information`, whose environment variables carry
    /// PLAINTEXT values and, for SECRETS_MANAGER ones, the secret's name only.
    fn event(
        &self,
        state: &BuildState,
        detail_type: &str,
        fields: Value,
        log_group: &str,
    ) -> Value {
        let arn = format!("arn:aws:codebuild:{ACCOUNT}:build/{}", self.id);
        let phases: Vec<Value> = state
            .phases
            .iter()
            .map(|p| {
                let mut phase = json!({"phase-type": p.kind, "start-time": event_time(p.start)});
                if let Some(status) = &p.status {
                    phase["phase-status"] = json!(status);
                    phase["phase-context"] = json!([]);
                }
                if let Some(end) = p.end {
                    phase["end-time"] = json!(event_time(end));
                    phase["duration-in-seconds"] = json!((end - p.start).round());
                }
                phase
            })
            .collect();
        let variables: Vec<Value> = self
            .env
            .iter()
            .map(|v| json!({"name": v["name"], "type": v["type"].as_str().unwrap_or("PLAINTEXT"), "value": v["value"]}))
            .collect();
        let mut detail = json!({
            "project-name": self.project,
            "build-id": arn,
            "additional-information": {
                "environment": {
                    "image": "aws/codebuild/amazonlinux-x86_64-standard:5.0",
                    "privileged-mode": false,
                    "compute-type": self.compute_type,
                    "type": "LINUX_CONTAINER",
                    "environment-variables": variables,
                },
                "timeout-in-minutes": self.timeout_minutes,
                "build-complete": state.end.is_some(),
                "build-number": self.number,
                "initiator": "taskrunner-submit",
                "build-start-time": event_time(self.start),
                "source": {"type": "NO_SOURCE"},
                "logs": {
                    "group-name": log_group,
                    "stream-name": self.stream,
                    "deep-link": format!("https://console.aws.amazon.com/cloudwatch/home?region=us-east-1#logEvent:group={log_group};stream={}", self.stream),
                },
                "phases": phases,
            },
            "version": "1",
        });
        for (key, value) in fields.as_object().into_iter().flatten() {
            detail[key] = value.clone();
        }
        json!({
            "version": "0",
            "id": format!("{:08x}-0000-4000-8000-{:012x}", self.number, (now() * 1000.0) as u64),
            "detail-type": detail_type,
            "source": "aws.codebuild",
            "account": "123456789012",
            "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "region": "us-east-1",
            "resources": [arn],
            "detail": detail,
        })
    }

    /// Emits a state change (the build's status now).
    fn state_changed(&self, state: &BuildState) {
        if let Some(bus) = &self.events {
            let current = state.phases.last().map_or("SUBMITTED", |p| p.kind);
            let fields = json!({"build-status": state.status, "current-phase": current, "current-phase-context": "[]"});
            let event = self.event(
                state,
                "CodeBuild Build State Change",
                fields,
                super::LOG_GROUP,
            );
            bus.emit(self.task_id(), event);
        }
    }

    /// Emits a phase change for the phase that just completed (the last one).
    fn phase_completed(&self, state: &BuildState) {
        let (Some(bus), Some(phase)) = (&self.events, state.phases.last()) else {
            return;
        };
        let end = phase.end.unwrap_or_else(now);
        let fields = json!({
            "completed-phase": phase.kind,
            "completed-phase-status": phase.status.as_deref().unwrap_or("SUCCEEDED"),
            "completed-phase-duration-seconds": (end - phase.start).round(),
            "completed-phase-start": event_time(phase.start),
            "completed-phase-end": event_time(end),
            "completed-phase-context": "[]",
        });
        let event = self.event(
            state,
            "CodeBuild Build Phase Change",
            fields,
            super::LOG_GROUP,
        );
        bus.emit(self.task_id(), event);
    }

    fn to_json(&self, region_account: &str, log_group: &str) -> Value {
        let state = self.state.lock().unwrap();
        let phases: Vec<Value> = state
            .phases
            .iter()
            .map(|p| {
                let mut phase = json!({"phaseType": p.kind, "startTime": p.start});
                if let Some(status) = &p.status {
                    phase["phaseStatus"] = json!(status);
                }
                if let Some(end) = p.end {
                    phase["endTime"] = json!(end);
                    phase["durationInSeconds"] = json!((end - p.start).round() as i64);
                }
                if let Some((code, message)) = &p.context {
                    phase["contexts"] = json!([{"statusCode": code, "message": message}]);
                }
                phase
            })
            .collect();
        let mut build = json!({
            "id": self.id,
            "arn": format!("arn:aws:codebuild:{region_account}:build/{}", self.id),
            "buildNumber": self.number,
            "projectName": self.project,
            "startTime": self.start,
            "currentPhase": state.phases.last().map_or("SUBMITTED", |p| p.kind),
            "buildStatus": state.status,
            "buildComplete": state.end.is_some(),
            "phases": phases,
            "timeoutInMinutes": self.timeout_minutes,
            "queuedTimeoutInMinutes": 480,
            "initiator": "taskrunner-submit",
            "source": {"type": "NO_SOURCE"},
            "environment": {
                "type": "LINUX_CONTAINER",
                "image": "aws/codebuild/amazonlinux-x86_64-standard:5.0",
                "computeType": self.compute_type,
                "environmentVariables": self.env,
            },
            "logs": {"groupName": log_group, "streamName": self.stream},
        });
        if let Some(end) = state.end {
            build["endTime"] = json!(end);
        }
        build
    }
}

/// The stand-in's builds and what it needs to run them.
pub struct CodeBuild {
    moto: String,
    http: reqwest::Client,
    root: PathBuf,
    log_group: String,
    gitconfig: String,
    builds: Mutex<Vec<Arc<Build>>>,
    tokens: Mutex<HashMap<String, String>>,
    events: OnceLock<Arc<EventBus>>,
}

impl CodeBuild {
    /// Builds run under `root`; logs go to `log_group` in moto at `moto`; each build's
    /// `$HOME/.gitconfig` holds `gitconfig`.
    pub fn new(moto: &str, root: &Path, log_group: &str, gitconfig: &str) -> Arc<Self> {
        Arc::new(Self {
            moto: moto.to_owned(),
            http: reqwest::Client::new(),
            root: root.to_owned(),
            log_group: log_group.to_owned(),
            gitconfig: gitconfig.to_owned(),
            builds: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            events: OnceLock::new(),
        })
    }

    /// Builds started from now on emit their events to `bus`.
    pub fn emit_events_to(&self, bus: Arc<EventBus>) {
        let _ = self.events.set(bus);
    }

    /// When the build of `task_id` ended (its `endTime`), if it did.
    pub fn build_end(&self, task_id: &str) -> Option<f64> {
        self.builds
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.task_id() == Some(task_id))
            .find_map(|b| b.state.lock().unwrap().end)
    }

    /// When the BUILD phase of `task_id`'s build ended (the task's end), if it did.
    pub fn task_end(&self, task_id: &str) -> Option<f64> {
        self.builds
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.task_id() == Some(task_id))
            .find_map(|b| {
                let state = b.state.lock().unwrap();
                state
                    .phases
                    .iter()
                    .find(|p| p.kind == "BUILD")
                    .and_then(|p| p.end)
                    .or(state.end)
            })
    }

    /// Answers one awsJson call (`operation` from `X-Amz-Target: CodeBuild_20161006.<op>`).
    pub async fn call(self: &Arc<Self>, operation: &str, body: &Value) -> (u16, Value) {
        match operation {
            "StartBuild" => self.start_build(body).await,
            "BatchGetBuilds" => {
                let builds = self.builds.lock().unwrap().clone();
                let ids: Vec<&str> = body["ids"]
                    .as_array()
                    .map(|ids| ids.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let (mut found, mut missing) = (Vec::new(), Vec::new());
                for id in ids {
                    match builds.iter().find(|b| b.id == id) {
                        Some(build) => found.push(build.to_json(ACCOUNT, &self.log_group)),
                        None => missing.push(json!(id)),
                    }
                }
                (200, json!({"builds": found, "buildsNotFound": missing}))
            }
            "StopBuild" => {
                let id = body["id"].as_str().unwrap_or_default();
                let Some(build) = self.build(id) else {
                    return not_found(id);
                };
                stop(&build, "STOPPED");
                (
                    200,
                    json!({"build": build.to_json(ACCOUNT, &self.log_group)}),
                )
            }
            "ListBuildsForProject" => {
                let project = body["projectName"].as_str().unwrap_or_default();
                let mut ids: Vec<Value> = self
                    .builds
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|b| b.project == project)
                    .map(|b| json!(b.id))
                    .collect();
                if body["sortOrder"] != "ASCENDING" {
                    ids.reverse();
                }
                (200, json!({"ids": ids}))
            }
            other => (
                400,
                json!({"__type": "InvalidInputException", "message": format!("the CodeBuild stand-in does not implement {other}")}),
            ),
        }
    }

    fn build(&self, id: &str) -> Option<Arc<Build>> {
        self.builds
            .lock()
            .unwrap()
            .iter()
            .find(|b| b.id == id)
            .cloned()
    }

    /// Every build's id and status.
    pub fn statuses(&self) -> Vec<(String, String)> {
        self.builds
            .lock()
            .unwrap()
            .iter()
            .map(|b| (b.id.clone(), b.state.lock().unwrap().status.clone()))
            .collect()
    }

    /// Ends every running build (the test is over).
    pub fn stop_all(&self) {
        for build in self.builds.lock().unwrap().iter() {
            stop(build, "STOPPED");
        }
    }

    async fn start_build(self: &Arc<Self>, body: &Value) -> (u16, Value) {
        let project = body["projectName"].as_str().unwrap_or_default().to_owned();
        let token = body["idempotencyToken"].as_str().map(str::to_owned);
        // One lock for the lookup and the insert, so two retries cannot start two builds.
        let build = {
            let mut tokens = self.tokens.lock().unwrap();
            if let Some(id) = token.as_ref().and_then(|t| tokens.get(t)) {
                let build = self.build(id).unwrap();
                return (
                    200,
                    json!({"build": build.to_json(ACCOUNT, &self.log_group)}),
                );
            }
            let mut builds = self.builds.lock().unwrap();
            let number = builds.len() as u64 + 1;
            let uuid = format!("{:08x}-0000-4000-8000-{:012x}", number, now() as u64);
            let start = now();
            let build = Arc::new(Build {
                id: format!("{project}:{uuid}"),
                number,
                project,
                start,
                compute_type: body["computeTypeOverride"]
                    .as_str()
                    .unwrap_or("BUILD_GENERAL1_SMALL")
                    .to_owned(),
                timeout_minutes: body["timeoutInMinutesOverride"].as_u64().unwrap_or(360),
                env: body["environmentVariablesOverride"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                secondary_sources: body["secondarySourcesOverride"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                stream: uuid,
                state: Mutex::new(BuildState {
                    status: "IN_PROGRESS".into(),
                    phases: vec![Phase {
                        kind: "SUBMITTED",
                        status: None,
                        start,
                        end: None,
                        context: None,
                    }],
                    end: None,
                    group: None,
                    ending: None,
                }),
                events: self.events.get().cloned(),
            });
            builds.push(Arc::clone(&build));
            if let Some(token) = token {
                tokens.insert(token, build.id.clone());
            }
            build
        };
        let buildspec = body["buildspecOverride"].as_str().unwrap_or_default();
        let runner = Arc::clone(self);
        let spec = buildspec.to_owned();
        let running = Arc::clone(&build);
        tokio::spawn(async move { runner.run(running, spec).await });
        (
            200,
            json!({"build": build.to_json(ACCOUNT, &self.log_group)}),
        )
    }

    async fn run(self: Arc<Self>, build: Arc<Build>, buildspec: String) {
        let dir = self.root.join(&build.stream);
        let logs = Logs::new(
            self.http.clone(),
            &self.moto,
            &self.log_group,
            &build.stream,
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(build.timeout_minutes * 60);
        build.state_changed(&build.state.lock().unwrap());
        for kind in ["QUEUED", "PROVISIONING"] {
            enter(&build, kind, &logs).await;
        }
        let (env, masks) = match self.environment(&build, &dir).await {
            Ok(resolved) => resolved,
            Err(message) => {
                logs.line(&format!("[Container] {} {message}", stamp()), &[]);
                logs.flush().await;
                end_phase(&build, "FAILED", Some(("CLIENT_ERROR", &message)));
                finish(&build, "FAILED", &logs).await;
                return;
            }
        };
        let phases = match parse_buildspec(&buildspec, &dir) {
            Ok(phases) => phases,
            Err(message) => {
                end_phase(&build, "FAILED", Some(("YAML_FILE_ERROR", &message)));
                finish(&build, "FAILED", &logs).await;
                return;
            }
        };
        end_phase(&build, "SUCCEEDED", None);
        enter(&build, "DOWNLOAD_SOURCE", &logs).await;
        let mut env = env;
        match self.download_sources(&build, &dir).await {
            Ok(sources) => env.extend(sources),
            Err(message) => {
                logs.line(&format!("[Container] {} {message}", stamp()), &[]);
                logs.flush().await;
                end_phase(&build, "FAILED", Some(("CLIENT_ERROR", &message)));
                finish(&build, "FAILED", &logs).await;
                return;
            }
        }
        end_phase(&build, "SUCCEEDED", None);
        enter(&build, "INSTALL", &logs).await;
        end_phase(&build, "SUCCEEDED", None);
        let mut failed = false;
        for (kind, key) in [
            ("PRE_BUILD", "pre_build"),
            ("BUILD", "build"),
            ("POST_BUILD", "post_build"),
        ] {
            // A failed INSTALL or PRE_BUILD skips to FINALIZING; POST_BUILD runs after a failed BUILD.
            if failed && kind != "POST_BUILD" {
                continue;
            }
            enter(&build, kind, &logs).await;
            let commands = phases.get(key).cloned().unwrap_or_default();
            let outcome = self
                .run_phase(
                    &build, &commands, &env, &masks, &dir, deadline, &logs, failed,
                )
                .await;
            logs.flush().await;
            match outcome {
                PhaseOutcome::Succeeded => end_phase(&build, "SUCCEEDED", None),
                PhaseOutcome::Failed(message) => {
                    end_phase(
                        &build,
                        "FAILED",
                        Some(("COMMAND_EXECUTION_ERROR", &message)),
                    );
                    failed = true;
                }
                PhaseOutcome::Ended(status) => {
                    end_phase(&build, status, None);
                    finish(&build, status, &logs).await;
                    return;
                }
            }
        }
        finish(&build, if failed { "FAILED" } else { "SUCCEEDED" }, &logs).await;
    }

    /// The build's environment: `PLAINTEXT` values as given, `SECRETS_MANAGER` ones fetched
    /// from moto; and the values to mask.
    async fn environment(
        &self,
        build: &Build,
        dir: &Path,
    ) -> Result<(Vec<(String, String)>, Vec<String>), String> {
        let home = dir.join("home");
        let src = dir.join("src");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(home.join(".gitconfig"), &self.gitconfig).unwrap();
        let mut env = vec![
            ("HOME".to_owned(), home.display().to_string()),
            ("CODEBUILD_BUILD_ID".to_owned(), build.id.clone()),
            (
                "CODEBUILD_BUILD_NUMBER".to_owned(),
                build.number.to_string(),
            ),
            ("CODEBUILD_SRC_DIR".to_owned(), src.display().to_string()),
            ("CODEBUILD_BUILD_SUCCEEDING".to_owned(), "1".to_owned()),
        ];
        let mut masks = Vec::new();
        for variable in &build.env {
            let name = variable["name"].as_str().unwrap_or_default().to_owned();
            let value = variable["value"].as_str().unwrap_or_default();
            match variable["type"].as_str().unwrap_or("PLAINTEXT") {
                "SECRETS_MANAGER" => {
                    let secret = self.secret(value).await.map_err(|why| {
                        format!(
                            "Secrets Manager error: {why} (secret {value:?} for variable {name})"
                        )
                    })?;
                    masks.push(secret.clone());
                    env.push((name, secret));
                }
                _ => env.push((name, value.to_owned())),
            }
        }
        Ok((env, masks))
    }

    /// Copies each S3 secondary source (`bucket/prefix/`) into the build's directory; the
    /// `CODEBUILD_SRC_DIR_<id>` variables that point at them.
    async fn download_sources(
        &self,
        build: &Build,
        dir: &Path,
    ) -> Result<Vec<(String, String)>, String> {
        let mut env = Vec::new();
        for source in &build.secondary_sources {
            let id = source["sourceIdentifier"].as_str().unwrap_or_default();
            let location = source["location"].as_str().unwrap_or_default();
            if source["type"] != "S3" {
                return Err(format!(
                    "the stand-in only downloads S3 sources, not {source}"
                ));
            }
            let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
            let target = dir.join("sources").join(id);
            std::fs::create_dir_all(&target).unwrap();
            let listing = self
                .s3(&format!("{bucket}?list-type=2&prefix={prefix}"))
                .await
                .map_err(|why| format!("CLIENT_ERROR: error listing s3://{location}: {why}"))?;
            let listing = String::from_utf8_lossy(&listing).into_owned();
            for key in listing
                .split("<Key>")
                .skip(1)
                .filter_map(|k| k.split_once("</Key>"))
            {
                let key = key.0;
                let Some(relative) = key.strip_prefix(prefix).filter(|r| !r.is_empty()) else {
                    continue;
                };
                let bytes = self.s3(&format!("{bucket}/{key}")).await.map_err(|why| {
                    format!("CLIENT_ERROR: error reading s3://{bucket}/{key}: {why}")
                })?;
                let path = target.join(relative);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            env.push((
                format!("CODEBUILD_SRC_DIR_{id}"),
                target.display().to_string(),
            ));
        }
        Ok(env)
    }

    async fn s3(&self, path: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(format!("{}/{path}", self.moto))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20261206/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body.to_vec())
    }

    async fn secret(&self, id: &str) -> Result<String, String> {
        let (status, answer) = aws_json(
            &self.http,
            &self.moto,
            "secretsmanager.GetSecretValue",
            &json!({"SecretId": id}),
        )
        .await;
        if status != 200 {
            return Err(answer["__type"]
                .as_str()
                .or(answer["message"].as_str())
                .unwrap_or("GetSecretValue failed")
                .to_owned());
        }
        Ok(answer["SecretString"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_phase(
        &self,
        build: &Build,
        commands: &[String],
        env: &[(String, String)],
        masks: &[String],
        dir: &Path,
        deadline: Instant,
        logs: &Logs,
        after_failure: bool,
    ) -> PhaseOutcome {
        for command in commands {
            logs.line(
                &format!("[Container] {} Running command {command}", stamp()),
                masks,
            );
            let mut child = tokio::process::Command::new("bash")
                .arg("-c")
                .arg(command)
                .current_dir(dir.join("src"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env(
                    "CODEBUILD_BUILD_SUCCEEDING",
                    if after_failure { "0" } else { "1" },
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("bash");
            let group = child.id().map(|id| id as i32);
            {
                let mut state = build.state.lock().unwrap();
                if let Some(status) = state.ending {
                    drop(state);
                    kill_group(group);
                    return PhaseOutcome::Ended(status);
                }
                state.group = group;
            }
            let out = pump(child.stdout.take().unwrap(), logs.clone(), masks.to_vec());
            let err = pump(child.stderr.take().unwrap(), logs.clone(), masks.to_vec());
            let status = tokio::select! {
                status = child.wait() => Some(status),
                () = tokio::time::sleep_until(deadline.into()) => None,
            };
            if status.is_none() {
                build
                    .state
                    .lock()
                    .unwrap()
                    .ending
                    .get_or_insert("TIMED_OUT");
                kill_group(group);
                let _ = child.wait().await;
            }
            let _ = tokio::join!(out, err);
            let ending = {
                let mut state = build.state.lock().unwrap();
                state.group = None;
                state.ending
            };
            if let Some(status) = ending {
                return PhaseOutcome::Ended(status);
            }
            let code = status
                .and_then(|s| s.ok())
                .and_then(|s| s.code())
                .unwrap_or(-1);
            if code != 0 {
                let message = format!(
                    "Error while executing command: {}. Reason: exit status {code}",
                    first_line(command)
                );
                logs.line(
                    &format!(
                        "[Container] {} Command did not exit successfully {} exit status {code}",
                        stamp(),
                        first_line(command)
                    ),
                    masks,
                );
                return PhaseOutcome::Failed(message);
            }
        }
        PhaseOutcome::Succeeded
    }
}

enum PhaseOutcome {
    Succeeded,
    Failed(String),
    Ended(&'static str),
}

const ACCOUNT: &str = "us-east-1:123456789012";

fn not_found(id: &str) -> (u16, Value) {
    (
        400,
        json!({"__type": "ResourceNotFoundException", "message": format!("Build {id} does not exist")}),
    )
}

fn first_line(command: &str) -> &str {
    command.lines().next().unwrap_or_default()
}

fn stamp() -> String {
    chrono::Utc::now()
        .format("%Y/%m/%d %H:%M:%S%.6f")
        .to_string()
}

/// Asks a running build to end with `status`: its current command's process group is killed.
fn stop(build: &Build, status: &'static str) {
    let group = {
        let mut state = build.state.lock().unwrap();
        if state.end.is_some() {
            return;
        }
        state.ending.get_or_insert(status);
        state.group
    };
    kill_group(group);
}

fn kill_group(group: Option<i32>) {
    if let Some(group) = group {
        // SAFETY: kill(2) on a process group this stand-in created.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
}

async fn enter(build: &Build, kind: &'static str, logs: &Logs) {
    let at = now();
    let mut state = build.state.lock().unwrap();
    if let Some(last) = state.phases.last_mut() {
        if last.status.is_none() {
            last.status = Some("SUCCEEDED".into());
            last.end = Some(at);
            build.phase_completed(&state);
        }
    }
    state.phases.push(Phase {
        kind,
        status: None,
        start: at,
        end: None,
        context: None,
    });
    drop(state);
    logs.line(
        &format!("[Container] {} Entering phase {kind}", stamp()),
        &[],
    );
}

fn end_phase(build: &Build, status: &str, context: Option<(&str, &str)>) {
    let mut state = build.state.lock().unwrap();
    if let Some(last) = state.phases.last_mut() {
        last.status = Some(status.to_owned());
        last.end = Some(now());
        last.context = context.map(|(c, m)| (c.to_owned(), m.to_owned()));
        build.phase_completed(&state);
    }
}

async fn finish(build: &Build, status: &str, logs: &Logs) {
    for kind in ["UPLOAD_ARTIFACTS", "FINALIZING"] {
        let skipped = build
            .state
            .lock()
            .unwrap()
            .phases
            .iter()
            .any(|p| p.kind == kind);
        if !skipped {
            enter(build, kind, logs).await;
            end_phase(build, "SUCCEEDED", None);
        }
    }
    logs.line(
        &format!(
            "[Container] {} Phase complete: build State: {status}",
            stamp()
        ),
        &[],
    );
    logs.flush().await;
    let mut state = build.state.lock().unwrap();
    state.phases.push(Phase {
        kind: "COMPLETED",
        status: None,
        start: now(),
        end: None,
        context: None,
    });
    state.status = status.to_owned();
    state.end = Some(now());
    build.state_changed(&state);
}

/// The buildspec's phase commands, with `/tmp/taskrunner` moved into the build's directory.
fn parse_buildspec(buildspec: &str, dir: &Path) -> Result<HashMap<String, Vec<String>>, String> {
    let private = dir.join("tmp");
    std::fs::create_dir_all(&private).unwrap();
    let text = buildspec.replace(
        "/tmp/taskrunner",
        &private.join("taskrunner").display().to_string(),
    );
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\nspec = yaml.safe_load(sys.stdin.read()) or {}\n\
             print(json.dumps({k: (v or {}).get('commands') or [] for k, v in (spec.get('phases') or {}).items()}))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(|e| format!("python3: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "YAML_FILE_ERROR: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

fn pump(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    logs: Logs,
    masks: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.line(&line, &masks);
        }
    })
}

/// A build's log stream in moto's CloudWatch Logs; lines are sent in batches.
#[derive(Clone)]
struct Logs {
    http: reqwest::Client,
    moto: String,
    group: String,
    stream: String,
    buffer: Arc<Mutex<Vec<Value>>>,
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl Logs {
    async fn new(http: reqwest::Client, moto: &str, group: &str, stream: &str) -> Self {
        let logs = Self {
            http,
            moto: moto.to_owned(),
            group: group.to_owned(),
            stream: stream.to_owned(),
            buffer: Arc::new(Mutex::new(Vec::new())),
            sending: Arc::new(tokio::sync::Mutex::new(())),
        };
        aws_json(
            &logs.http,
            &logs.moto,
            "Logs_20140328.CreateLogStream",
            &json!({"logGroupName": group, "logStreamName": stream}),
        )
        .await;
        let flusher = logs.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                flusher.flush().await;
                if Arc::strong_count(&flusher.buffer) == 1 {
                    return;
                }
            }
        });
        logs
    }

    fn line(&self, line: &str, masks: &[String]) {
        let mut text = line.to_owned();
        for secret in masks.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "***");
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        self.buffer
            .lock()
            .unwrap()
            .push(json!({"timestamp": timestamp, "message": text}));
    }

    async fn flush(&self) {
        let _sending = self.sending.lock().await;
        let events: Vec<Value> = std::mem::take(&mut *self.buffer.lock().unwrap());
        if events.is_empty() {
            return;
        }
        let (status, answer) = aws_json(
            &self.http,
            &self.moto,
            "Logs_20140328.PutLogEvents",
            &json!({"logGroupName": self.group, "logStreamName": self.stream, "logEvents": events}),
        )
        .await;
        if status != 200 && status != 0 {
            eprintln!("PutLogEvents to {}: {status} {answer}", self.stream);
        }
    }
}

/// One awsJson 1.1 call to moto; its status and JSON answer.
pub async fn aws_json(
    http: &reqwest::Client,
    endpoint: &str,
    target: &str,
    body: &Value,
) -> (u16, Value) {
    // moto picks the service from the credential scope of the signature.
    let service = match target.split('.').next().unwrap_or_default() {
        "Logs_20140328" => "logs",
        "AWSStepFunctions" => "states",
        "DynamoDB_20120810" => "dynamodb",
        other => other,
    };
    let response = http
        .post(format!("{endpoint}/"))
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=test/20261206/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .await;
    // Status 0: moto is gone (the test is over) or never answered.
    let Ok(response) = response else {
        return (0, Value::Null);
    };
    let status = response.status().as_u16();
    let answer = response.json().await.unwrap_or(Value::Null);
    (status, answer)
}
