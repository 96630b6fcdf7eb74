//! The CodeBuild worker against mocked CodeBuild and CloudWatch Logs clients.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::operation::get_log_events::GetLogEventsOutput;
use aws_sdk_cloudwatchlogs::types::OutputLogEvent;
use aws_sdk_codebuild::Client;
use aws_sdk_codebuild::config::retry::RetryConfig;
use aws_sdk_codebuild::error::ErrorMetadata;
use aws_sdk_codebuild::operation::batch_get_builds::BatchGetBuildsOutput;
use aws_sdk_codebuild::operation::list_builds_for_project::ListBuildsForProjectOutput;
use aws_sdk_codebuild::operation::start_build::{
    StartBuildError, StartBuildInput, StartBuildOutput,
};
use aws_sdk_codebuild::operation::stop_build::{StopBuildError, StopBuildOutput};
use aws_sdk_codebuild::primitives::DateTime as AwsDateTime;
use aws_sdk_codebuild::types::{
    Build, BuildPhase, BuildPhaseType, ComputeType, EnvironmentType, EnvironmentVariable,
    EnvironmentVariableType, LogsLocation, PhaseContext, ProjectEnvironment, StatusType,
};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use base64::Engine as _;
use chrono::TimeZone as _;

use super::*;
use crate::config::WorkerSizes;
use crate::ports::{Outcome, TaskEnd};
use crate::task::{GitSource, SecretEnv, TaskFile, WorkerResources};

fn spec(task_id: &str, size: &str) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::parse(task_id).unwrap(),
        task_file: TaskFile::parse("jobs/deploy.py").unwrap(),
        worker: WorkerResources {
            name: size.into(),
            cpus: 1,
            memory_mib: 2048,
        },
        env: BTreeMap::from([("STAGE".to_owned(), "prod".to_owned())]),
        secrets: vec![SecretEnv {
            secret: "DB_PASSWORD".into(),
            env: "DATABASE_PASSWORD".into(),
        }],
        git: vec![
            GitSource {
                remote_url: "https://git.example.com/team/app.git".into(),
                secret_name: Some("GIT_PAT".into()),
                username: "bot".into(),
                local_path: "app".into(),
                branch: Some("main".into()),
                commit: None,
                sparse_checkout_folders: vec![],
                fetch_depth: Some(1),
            },
            GitSource {
                remote_url: "https://git.example.com/team/public.git".into(),
                secret_name: None,
                username: "bot".into(),
                local_path: "public".into(),
                branch: None,
                commit: None,
                sparse_checkout_folders: vec![],
                fetch_depth: None,
            },
        ],
        startup_script: Some("pip install -r app/requirements.txt".into()),
        log_level: Some("DEBUG".into()),
        modules_log_level: None,
        bypass_ssl_verification: false,
        callback_url: Some("https://ci.example.com/hook".into()),
        has_callback_token: true,
        terminate_on_completion: true,
        timeout_seconds: 3600,
        email: None,
        concurrency_key: None,
        cancel_in_progress: false,
        parent_task_id: None,
    }
}

fn config() -> CodeBuildConfig {
    CodeBuildConfig {
        project_name: "taskrunner-worker".into(),
        secret_prefix: "taskrunner/".into(),
        sizes: WorkerSizes::default(),
        log_group: "/aws/codebuild/taskrunner-worker".into(),
        buildspec: RUNNER_BUILDSPEC.into(),
        keep_seconds: 1800,
        tasks_source: None,
        cli_source: None,
    }
}

fn no_retries(builder: aws_sdk_codebuild::config::Builder) -> aws_sdk_codebuild::config::Builder {
    builder.retry_config(RetryConfig::disabled())
}

fn worker(codebuild: &[&Rule], logs: &[&Rule]) -> CodeBuildWorker {
    let codebuild = mock_client!(aws_sdk_codebuild, RuleMode::MatchAny, codebuild, no_retries);
    let logs = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, logs);
    CodeBuildWorker::new(codebuild, logs, config())
}

fn time(secs: i64) -> AwsDateTime {
    AwsDateTime::from_secs(1_800_000_000 + secs)
}

fn chrono_time(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

/// A phase that started at `start` and, when it has a status, ended ten seconds later.
fn phase(kind: BuildPhaseType, status: Option<StatusType>, start: i64) -> BuildPhase {
    let mut phase = BuildPhase::builder()
        .phase_type(kind)
        .start_time(time(start));
    if let Some(status) = status {
        phase = phase.phase_status(status).end_time(time(start + 10));
    }
    phase.build()
}

/// A build of task `task` (kept for 600 s after its task when it is kept).
fn build(id: &str, task: &str, status: StatusType, phases: Vec<BuildPhase>) -> Build {
    let var = |name: &str, value: &str| {
        EnvironmentVariable::builder()
            .name(name)
            .value(value)
            .build()
            .unwrap()
    };
    let env = ProjectEnvironment::builder()
        .r#type(EnvironmentType::LinuxContainer)
        .image("aws/codebuild/standard:7.0")
        .compute_type(ComputeType::BuildGeneral1Small)
        .environment_variables(var("TASKRUNNER_TASK_ID", task))
        .environment_variables(var("TASKRUNNER_KEEP_SECONDS", "600"))
        .build()
        .unwrap();
    Build::builder()
        .id(id)
        .build_status(status)
        .set_phases(Some(phases))
        .environment(env)
        .logs(
            LogsLocation::builder()
                .group_name("/aws/codebuild/taskrunner-worker")
                .stream_name(id.split(':').next_back().unwrap_or(id))
                .build(),
        )
        .build()
}

/// The phases of a build that got through preparation, with BUILD in state `build` and,
/// when `post`, a POST_BUILD phase in progress.
fn through_build(build: Option<StatusType>, post: bool) -> Vec<BuildPhase> {
    let mut phases: Vec<BuildPhase> = [
        BuildPhaseType::Submitted,
        BuildPhaseType::Queued,
        BuildPhaseType::Provisioning,
        BuildPhaseType::DownloadSource,
        BuildPhaseType::Install,
        BuildPhaseType::PreBuild,
    ]
    .into_iter()
    .zip(0..)
    .map(|(kind, i)| phase(kind, Some(StatusType::Succeeded), i * 10))
    .collect();
    phases.push(phase(BuildPhaseType::Build, build, 100));
    if post {
        phases.push(phase(BuildPhaseType::PostBuild, None, 110));
    }
    phases
}

/// The phases up to INSTALL, then PRE_BUILD as given.
fn until_pre_build(pre_build: BuildPhase) -> Vec<BuildPhase> {
    let mut phases = through_build(None, false);
    phases.truncate(5);
    phases.push(pre_build);
    phases
}

fn status_of(build: &Build, log: &str) -> WorkerStatus {
    phases::worker_status(build, &phases::LogHints::parse(log), chrono_time(9999))
}

fn ended(status: &WorkerStatus) -> &TaskEnd {
    match &status.task {
        TaskPhase::Ended(end) => end,
        other => panic!("expected an ended task, got {other:?}"),
    }
}

fn handle(id: &str) -> WorkerHandle {
    WorkerHandle {
        backend: "codebuild".into(),
        id: id.into(),
    }
}

fn capture_start(seen: Arc<Mutex<Vec<StartBuildInput>>>) -> Rule {
    mock!(Client::start_build)
        .match_requests(move |req| {
            seen.lock().unwrap().push(req.clone());
            true
        })
        .then_output(|| {
            StartBuildOutput::builder()
                .build_value(Build::builder().id("taskrunner-worker:b-1").build())
                .build()
        })
}

fn env_of(input: &StartBuildInput) -> BTreeMap<String, (EnvironmentVariableType, String)> {
    input
        .environment_variables_override()
        .iter()
        .map(|v| {
            (
                v.name().to_owned(),
                (v.r#type().cloned().unwrap(), v.value().to_owned()),
            )
        })
        .collect()
}

#[tokio::test]
async fn start_builds_the_request_from_the_size_table_and_secret_names() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rule = capture_start(seen.clone());
    let worker = worker(&[&rule], &[]);
    let sizes = [
        ("X-Small", "BUILD_GENERAL1_SMALL"),
        ("small", "BUILD_GENERAL1_SMALL"),
        ("Medium", "BUILD_GENERAL1_MEDIUM"),
        ("Large", "BUILD_GENERAL1_LARGE"),
        ("2X-Large", "BUILD_GENERAL1_XLARGE"),
    ];
    for (size, _) in sizes {
        let started = worker.start(&spec("deploy-1", size)).await.unwrap();
        assert_eq!(started, handle("taskrunner-worker:b-1"));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), sizes.len());
    for (input, (_, compute)) in seen.iter().zip(sizes) {
        assert_eq!(input.compute_type_override().unwrap().as_str(), compute);
        assert_eq!(input.project_name(), Some("taskrunner-worker"));
        assert_eq!(input.buildspec_override(), Some(RUNNER_BUILDSPEC));
        assert_eq!(input.timeout_in_minutes_override(), Some(60));
        assert_eq!(
            input.idempotency_token(),
            Some(idempotency_token(&TaskId::parse("deploy-1").unwrap()).as_str())
        );
    }
    let env = env_of(&seen[0]);
    use EnvironmentVariableType::{Plaintext, SecretsManager};
    let expected_plain = [
        ("TASKRUNNER_TASK_ID", "deploy-1"),
        ("TASKRUNNER_KEEP_SECONDS", "0"),
        ("STAGE", "prod"),
        ("LOG_LEVEL", "DEBUG"),
    ];
    for (name, value) in expected_plain {
        assert_eq!(env[name], (Plaintext, value.to_owned()), "{name}");
    }
    assert_eq!(
        env["DATABASE_PASSWORD"],
        (SecretsManager, "taskrunner/DB_PASSWORD".to_owned())
    );
    assert_eq!(
        env["TASKRUNNER_GIT_TOKEN_0"],
        (SecretsManager, "taskrunner/GIT_PAT".to_owned())
    );
    // The second repository names no secret: no token variable for it.
    assert!(!env.contains_key("TASKRUNNER_GIT_TOKEN_1"));
    // Nothing else: the plain ones, the spec, and the two references.
    assert_eq!(env.len(), expected_plain.len() + 3);
    // The spec travels whole, and it holds names only.
    let (kind, encoded) = &env["TASKRUNNER_SPEC"];
    assert_eq!(*kind, Plaintext);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let back: TaskSpec = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(back, spec("deploy-1", "X-Small"));
}

#[tokio::test]
async fn a_task_token_reaches_the_build_as_a_secrets_manager_reference_only() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rule = capture_start(seen.clone());
    let secrets: Arc<dyn crate::ports::SecretStore> =
        Arc::new(crate::adapters::memory::MemorySecretStore::default());
    let worker =
        worker(&[&rule], &[]).serve_tasks_at("https://api.example.com", Arc::clone(&secrets));
    worker
        .start(&spec("deploy-1.train", "Small"))
        .await
        .unwrap();

    let input = seen.lock().unwrap().remove(0);
    let env = env_of(&input);
    assert_eq!(
        env["TASKRUNNER_API_URL"],
        (
            EnvironmentVariableType::Plaintext,
            "https://api.example.com".to_owned()
        )
    );
    assert_eq!(
        env["TASKRUNNER_TASK_TOKEN"],
        (
            EnvironmentVariableType::SecretsManager,
            "taskrunner/taskrunner-task-tokens/deploy-1.train".to_owned()
        )
    );
    let token = secrets
        .get("taskrunner-task-tokens/deploy-1.train")
        .await
        .unwrap()
        .expect("the token is kept for the build to read");
    let claims = crate::auth::task_token::TaskTokens::new(Arc::clone(&secrets))
        .verify(token.expose(), Utc::now())
        .await
        .unwrap();
    assert_eq!(claims.task_id.as_str(), "deploy-1.train");
    assert!(
        !format!("{input:?}").contains(token.expose()),
        "the StartBuild request never holds the token"
    );
}

#[tokio::test]
async fn start_keeps_the_build_for_kept_workers_and_clamps_the_timeout() {
    assert_eq!(timeout_minutes(0), 5);
    assert_eq!(timeout_minutes(60), 5);
    assert_eq!(timeout_minutes(301), 6);
    assert_eq!(timeout_minutes(3600), 60);
    assert_eq!(timeout_minutes(3601), 61);
    assert_eq!(timeout_minutes(36 * 3600), 2160);
    assert_eq!(timeout_minutes(40 * 3600), 2160);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let rule = capture_start(seen.clone());
    let worker = worker(&[&rule], &[]);
    let mut kept = spec("kept-1", "Small");
    kept.terminate_on_completion = false;
    worker.start(&kept).await.unwrap();
    let input = seen.lock().unwrap()[0].clone();
    // The task's hour plus the configured keep time (half an hour).
    assert_eq!(input.timeout_in_minutes_override(), Some(90));
    assert_eq!(env_of(&input)["TASKRUNNER_KEEP_SECONDS"].1, "1800");

    // No tasks directory configured: no secondary source.
    assert!(input.secondary_sources_override().is_empty());

    // Without a keep, CodeBuild ends the build at the task's own timeout.
    worker.start(&spec("plain-1", "Small")).await.unwrap();
    let input = seen.lock().unwrap()[1].clone();
    assert_eq!(input.timeout_in_minutes_override(), Some(60));
    assert_eq!(env_of(&input)["TASKRUNNER_KEEP_SECONDS"].1, "0");
}

#[tokio::test]
async fn the_tasks_directory_is_the_builds_secondary_source() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rule = capture_start(seen.clone());
    let codebuild = mock_client!(aws_sdk_codebuild, RuleMode::MatchAny, &[&rule], no_retries);
    let logs = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, &[]);
    let worker = CodeBuildWorker::new(
        codebuild,
        logs,
        CodeBuildConfig {
            tasks_source: Some("taskrunner-tasks-123/tasks/".into()),
            ..config()
        },
    );
    worker.start(&spec("tasks-1", "Small")).await.unwrap();
    let input = seen.lock().unwrap()[0].clone();
    let sources = input.secondary_sources_override();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].r#type(), &SourceType::S3);
    assert_eq!(sources[0].location(), Some("taskrunner-tasks-123/tasks/"));
    assert_eq!(sources[0].source_identifier(), Some("tasks"));
}

#[tokio::test]
async fn the_shipped_cli_is_a_secondary_source_too() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rule = capture_start(seen.clone());
    let codebuild = mock_client!(aws_sdk_codebuild, RuleMode::MatchAny, &[&rule], no_retries);
    let logs = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, &[]);
    let worker = CodeBuildWorker::new(
        codebuild,
        logs,
        CodeBuildConfig {
            tasks_source: Some("taskrunner-tasks-123/tasks/".into()),
            cli_source: Some("taskrunner-tasks-123/cli/".into()),
            ..config()
        },
    );
    worker.start(&spec("cli-1", "Small")).await.unwrap();
    let input = seen.lock().unwrap()[0].clone();
    let sources: Vec<_> = input
        .secondary_sources_override()
        .iter()
        .map(|s| {
            (
                s.source_identifier().unwrap_or_default(),
                s.location().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("tasks", "taskrunner-tasks-123/tasks/"),
            ("cli", "taskrunner-tasks-123/cli/")
        ]
    );
}

#[test]
fn the_idempotency_token_is_stable_per_task() {
    let a = TaskId::parse("deploy-1").unwrap();
    let b = TaskId::parse("deploy-2").unwrap();
    assert_eq!(idempotency_token(&a), idempotency_token(&a));
    assert_ne!(idempotency_token(&a), idempotency_token(&b));
    assert!(idempotency_token(&TaskId::parse(&"x".repeat(80)).unwrap()).len() <= 64);
}

#[tokio::test]
async fn start_refuses_what_codebuild_cannot_run_before_calling_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rule = capture_start(seen.clone());
    let worker = worker(&[&rule], &[]);

    let gpu = worker.start(&spec("t", "GPU")).await.unwrap_err();
    assert!(!gpu.is_transient());
    assert!(gpu.to_string().contains("GPU"), "{gpu}");

    let unknown = worker.start(&spec("t", "Huge")).await.unwrap_err();
    assert!(unknown.to_string().contains("\"Huge\""), "{unknown}");
    assert!(unknown.to_string().contains("X-Small"), "{unknown}");

    let mut reserved = spec("t", "Small");
    reserved
        .env
        .insert("CODEBUILD_BUILD_ID".into(), "spoofed".into());
    let error = worker.start(&reserved).await.unwrap_err();
    assert!(
        error.to_string().contains("reserved by AWS CodeBuild"),
        "{error}"
    );

    let mut own = spec("t", "Small");
    own.secrets[0].env = "TASKRUNNER_GIT_TOKEN_0".into();
    let error = worker.start(&own).await.unwrap_err();
    assert!(error.to_string().contains("set by taskrunner"), "{error}");

    let mut colon = spec("t", "Small");
    colon.secrets[0].secret = "db:password".into();
    let error = worker.start(&colon).await.unwrap_err();
    assert!(error.to_string().contains("':'"), "{error}");

    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn start_errors_are_transient_only_when_retrying_can_help() {
    let throttled = mock!(Client::start_build).then_error(|| {
        StartBuildError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build(),
        )
    });
    let error = worker(&[&throttled], &[])
        .start(&spec("t", "Small"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");

    let denied = mock!(Client::start_build).then_error(|| {
        StartBuildError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("not authorized to perform codebuild:StartBuild")
                .build(),
        )
    });
    let error = worker(&[&denied], &[])
        .start(&spec("t", "Small"))
        .await
        .unwrap_err();
    assert!(!error.is_transient());
    assert!(error.to_string().contains("StartBuild"), "{error}");
    assert!(
        error.to_string().contains("AccessDeniedException"),
        "{error}"
    );
}

#[tokio::test]
async fn the_sdk_retry_config_retries_throttling() {
    let rule = mock!(Client::start_build)
        .sequence()
        .error(|| {
            StartBuildError::generic(ErrorMetadata::builder().code("ThrottlingException").build())
        })
        .times(2)
        .output(|| {
            StartBuildOutput::builder()
                .build_value(Build::builder().id("p:after-retries").build())
                .build()
        })
        .build();
    let codebuild = mock_client!(aws_sdk_codebuild, RuleMode::Sequential, [&rule], |c| c
        .retry_config(sdk_retry_config().with_initial_backoff(Duration::from_millis(1))));
    let no_rules: [&Rule; 0] = [];
    let logs = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, no_rules);
    let worker = CodeBuildWorker::new(codebuild, logs, config());
    let started = worker.start(&spec("t", "Small")).await.unwrap();
    assert_eq!(started.id, "p:after-retries");
    assert_eq!(rule.num_calls(), 3);
}

#[test]
fn every_build_status_maps_to_a_task_phase() {
    use StatusType::{Failed, Fault, InProgress, Stopped, Succeeded, TimedOut};
    // Before BUILD: pending, then preparing.
    let queued = build(
        "p:1",
        "t",
        InProgress,
        vec![
            phase(BuildPhaseType::Submitted, Some(Succeeded), 0),
            phase(BuildPhaseType::Queued, None, 10),
        ],
    );
    assert_eq!(status_of(&queued, "").task, TaskPhase::Pending);
    assert!(status_of(&queued, "").worker_alive);
    for kind in [
        BuildPhaseType::Provisioning,
        BuildPhaseType::DownloadSource,
        BuildPhaseType::Install,
        BuildPhaseType::PreBuild,
    ] {
        let preparing = build(
            "p:1",
            "t",
            InProgress,
            vec![
                phase(BuildPhaseType::Submitted, Some(Succeeded), 0),
                phase(kind.clone(), None, 10),
            ],
        );
        assert_eq!(
            status_of(&preparing, "").task,
            TaskPhase::Preparing,
            "{kind:?}"
        );
    }

    // BUILD in progress: running since the phase started.
    let running = build("p:1", "t", InProgress, through_build(None, false));
    assert_eq!(
        status_of(&running, "").task,
        TaskPhase::Running {
            started_at: chrono_time(100)
        }
    );

    // BUILD over: ended with the BUILD phase's outcome.
    let cases = [
        (Succeeded, Outcome::Succeeded, Some(0)),
        (Failed, Outcome::Failed, Some(3)),
        (TimedOut, Outcome::TimedOut, None),
        (Stopped, Outcome::Cancelled, None),
        (Fault, Outcome::Error, None),
    ];
    for (status, outcome, exit_code) in cases {
        let done = build(
            "p:1",
            "t",
            status.clone(),
            through_build(Some(status.clone()), false),
        );
        let worker_status = status_of(&done, "noise\n[taskrunner] exit_code=3\n");
        let end = ended(&worker_status);
        assert_eq!(end.outcome, outcome, "{status:?}");
        assert_eq!(end.exit_code, exit_code, "{status:?}");
        assert_eq!(end.started_at, Some(chrono_time(100)));
        assert_eq!(end.finished_at, chrono_time(110));
        assert!(!worker_status.worker_alive);
    }
}

#[test]
fn a_finished_build_phase_ends_the_task_while_the_build_keeps_the_worker() {
    let kept = build(
        "p:1",
        "t",
        StatusType::InProgress,
        through_build(Some(StatusType::Succeeded), true),
    );
    let status = status_of(&kept, "");
    assert!(status.worker_alive);
    assert_eq!(ended(&status).outcome, Outcome::Succeeded);
    assert_eq!(keep_until(&kept), Some(chrono_time(110 + 600)));

    let failed = build(
        "p:1",
        "t",
        StatusType::InProgress,
        through_build(Some(StatusType::Failed), true),
    );
    let status = status_of(&failed, "[taskrunner] exit_code=42\n");
    assert!(status.worker_alive);
    assert_eq!(ended(&status).outcome, Outcome::Failed);
    assert_eq!(ended(&status).exit_code, Some(42));
    // Without the marker line the exit code is unknown, not invented.
    assert_eq!(ended(&status_of(&failed, "")).exit_code, None);
}

#[test]
fn a_failed_preparation_is_an_error_with_the_reason() {
    let pre_build = BuildPhase::builder()
        .phase_type(BuildPhaseType::PreBuild)
        .phase_status(StatusType::Failed)
        .start_time(time(50))
        .end_time(time(60))
        .contexts(
            PhaseContext::builder()
                .status_code("COMMAND_EXECUTION_ERROR")
                .message("Error while executing command: bash /tmp/taskrunner/runner.sh prepare. Reason: exit status 1")
                .build(),
        )
        .build();
    let failed = build("p:1", "t", StatusType::Failed, until_pre_build(pre_build));
    let log = "[taskrunner] cloning https://git.example.com/a.git into app\n\
               [taskrunner] error: cloning https://git.example.com/a.git (secret \"GIT_PAT\") failed: Authentication failed\n";
    let status = status_of(&failed, log);
    let end = ended(&status);
    assert_eq!(end.outcome, Outcome::Error);
    assert_eq!(end.exit_code, None);
    assert_eq!(end.started_at, None);
    assert_eq!(end.finished_at, chrono_time(60));
    let reason = end.reason.as_deref().unwrap();
    assert!(reason.contains("PRE_BUILD"), "{reason}");
    assert!(reason.contains("Authentication failed"), "{reason}");
    assert!(reason.contains("COMMAND_EXECUTION_ERROR"), "{reason}");

    // Stopped while preparing: cancelled, not an error.
    let stopped = build(
        "p:1",
        "t",
        StatusType::Stopped,
        until_pre_build(phase(
            BuildPhaseType::PreBuild,
            Some(StatusType::Stopped),
            50,
        )),
    );
    assert_eq!(ended(&status_of(&stopped, "")).outcome, Outcome::Cancelled);

    // A fault before any phase ran says what went wrong.
    let fault = build(
        "p:1",
        "t",
        StatusType::Fault,
        vec![phase(
            BuildPhaseType::Submitted,
            Some(StatusType::Succeeded),
            0,
        )],
    );
    let status = status_of(&fault, "");
    assert_eq!(ended(&status).outcome, Outcome::Error);
    assert!(ended(&status).reason.as_deref().unwrap().contains("FAULT"));
}

fn batch_get(builds: Vec<Build>) -> Rule {
    mock!(Client::batch_get_builds).then_output(move || {
        BatchGetBuildsOutput::builder()
            .set_builds(Some(builds.clone()))
            .build()
    })
}

fn log_page(messages: &[&str], backward: &str) -> GetLogEventsOutput {
    let mut page = GetLogEventsOutput::builder().next_backward_token(backward);
    for (message, i) in messages.iter().zip(0..) {
        page = page.events(
            OutputLogEvent::builder()
                .timestamp(i)
                .message(*message)
                .build(),
        );
    }
    page.build()
}

/// A stream of five lines, read newest first in three pages.
fn paged_log() -> Vec<Rule> {
    let page =
        |token: Option<&'static str>, messages: &'static [&'static str], next: &'static str| {
            mock!(aws_sdk_cloudwatchlogs::Client::get_log_events)
                .match_requests(move |req| {
                    req.next_token() == token
                        && req.start_from_head() == Some(false)
                        && req.log_group_name() == Some("/aws/codebuild/taskrunner-worker")
                        && req.log_stream_name() == Some("b-1")
                })
                .then_output(move || log_page(messages, next))
        };
    vec![
        page(None, &["line 4\n", "line 5\n"], "b1"),
        page(Some("b1"), &["line 2\n", "line 3"], "b2"),
        // The start of the stream: the token sent comes back.
        page(Some("b2"), &["line 1\n"], "b2"),
    ]
}

#[tokio::test]
async fn log_tail_pages_backwards_until_it_has_enough() {
    let logs = paged_log();
    let get = batch_get(vec![build(
        "taskrunner-worker:b-1",
        "t",
        StatusType::InProgress,
        through_build(None, false),
    )]);
    let log_rules: Vec<&Rule> = logs.iter().collect();
    let worker = worker(&[&get], &log_rules);
    let h = handle("taskrunner-worker:b-1");

    let whole = worker.log_tail(&h, 1000).await.unwrap();
    assert_eq!(whole.text, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    assert!(!whole.truncated);
    assert_eq!(logs[2].num_calls(), 1);

    let tail = worker.log_tail(&h, 10).await.unwrap();
    assert_eq!(tail.text, " 4\nline 5\n");
    assert!(tail.truncated);
    // Enough was on the newest page: the older ones were not read.
    assert_eq!(logs[1].num_calls(), 1);

    let two_pages = worker.log_tail(&h, 20).await.unwrap();
    assert_eq!(two_pages.text, "ine 3\nline 4\nline 5\n");
    assert!(two_pages.truncated);
    assert_eq!(logs[2].num_calls(), 1);
}

#[tokio::test]
async fn status_reads_the_exit_code_from_the_log_of_a_failed_task() {
    let get = batch_get(vec![build(
        "taskrunner-worker:b-1",
        "t",
        StatusType::Failed,
        through_build(Some(StatusType::Failed), false),
    )]);
    let log = mock!(aws_sdk_cloudwatchlogs::Client::get_log_events)
        .then_output(|| log_page(&["Traceback...\n", "[taskrunner] exit_code=2\n"], "b1"));
    let worker = worker(&[&get], &[&log]);
    let status = worker
        .status(&handle("taskrunner-worker:b-1"))
        .await
        .unwrap();
    assert_eq!(ended(&status).outcome, Outcome::Failed);
    assert_eq!(ended(&status).exit_code, Some(2));
}

#[tokio::test]
async fn a_missing_build_is_a_permanent_error() {
    let get = mock!(Client::batch_get_builds).then_output(|| {
        BatchGetBuildsOutput::builder()
            .builds_not_found("taskrunner-worker:gone")
            .build()
    });
    let worker = worker(&[&get], &[]);
    let error = worker
        .status(&handle("taskrunner-worker:gone"))
        .await
        .unwrap_err();
    assert!(!error.is_transient());
    assert!(error.to_string().contains("not found"), "{error}");
    let other = worker
        .status(&WorkerHandle {
            backend: "local".into(),
            id: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(other.to_string().contains("\"local\""), "{other}");
}

#[tokio::test]
async fn terminate_stops_the_build_and_a_finished_one_is_fine() {
    let stop = mock!(Client::stop_build)
        .match_requests(|req| req.id() == Some("taskrunner-worker:b-1"))
        .then_output(|| StopBuildOutput::builder().build());
    let finished = mock!(Client::stop_build)
        .match_requests(|req| req.id() == Some("taskrunner-worker:done"))
        .then_error(|| {
            StopBuildError::generic(
                ErrorMetadata::builder()
                    .code("InvalidInputException")
                    .message("Build is already completed")
                    .build(),
            )
        });
    let worker = worker(&[&stop, &finished], &[]);
    worker
        .terminate(&handle("taskrunner-worker:b-1"), TerminateReason::Cancelled)
        .await
        .unwrap();
    worker
        .terminate(
            &handle("taskrunner-worker:done"),
            TerminateReason::Completed,
        )
        .await
        .unwrap();
    assert_eq!(stop.num_calls(), 1);
    assert_eq!(finished.num_calls(), 1);
}

fn listing(ids: &[&str]) -> Rule {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    mock!(Client::list_builds_for_project)
        .match_requests(|req| req.project_name() == Some("taskrunner-worker"))
        .then_output(move || {
            ListBuildsForProjectOutput::builder()
                .set_ids(Some(ids.clone()))
                .build()
        })
}

#[tokio::test]
async fn a_task_handle_finds_its_build_by_the_task_id_variable() {
    let list = listing(&["p:3", "p:2", "p:1"]);
    let get = batch_get(vec![
        build(
            "p:3",
            "other",
            StatusType::InProgress,
            through_build(None, false),
        ),
        build(
            "p:2",
            "deploy-1",
            StatusType::InProgress,
            through_build(None, false),
        ),
        build(
            "p:1",
            "old",
            StatusType::Succeeded,
            through_build(Some(StatusType::Succeeded), false),
        ),
    ]);
    let stop = mock!(Client::stop_build)
        .match_requests(|req| req.id() == Some("p:2"))
        .then_output(|| StopBuildOutput::builder().build());
    let worker = worker(&[&list, &get, &stop], &[]);

    let h = worker.handle_for(&TaskId::parse("deploy-1").unwrap());
    assert_eq!(h, handle("task:deploy-1"));
    let status = worker.status(&h).await.unwrap();
    assert!(matches!(status.task, TaskPhase::Running { .. }));
    worker
        .terminate(&h, TerminateReason::Cancelled)
        .await
        .unwrap();
    assert_eq!(stop.num_calls(), 1);

    // No build for the task (yet): pending, and nothing to stop.
    let none = worker.handle_for(&TaskId::parse("never-started").unwrap());
    let status = worker.status(&none).await.unwrap();
    assert_eq!(status.task, TaskPhase::Pending);
    assert!(!status.worker_alive);
    worker
        .terminate(&none, TerminateReason::Cleanup)
        .await
        .unwrap();
    assert_eq!(stop.num_calls(), 1);
    assert_eq!(worker.log_tail(&none, 100).await.unwrap().text, "");
}

#[tokio::test]
async fn list_reports_builds_in_progress_with_their_keep_time() {
    let list = listing(&["p:3", "p:2", "p:1"]);
    let get = batch_get(vec![
        build(
            "p:3",
            "running",
            StatusType::InProgress,
            through_build(None, false),
        ),
        build(
            "p:2",
            "kept",
            StatusType::InProgress,
            through_build(Some(StatusType::Succeeded), true),
        ),
        build(
            "p:1",
            "done",
            StatusType::Succeeded,
            through_build(Some(StatusType::Succeeded), false),
        ),
    ]);
    let worker = worker(&[&list, &get], &[]);
    let found = worker.list().await.unwrap();
    assert_eq!(
        found,
        vec![
            WorkerSummary {
                handle: handle("p:3"),
                task_id: "running".into(),
                holds_resources: true,
                keep_until: None,
            },
            WorkerSummary {
                handle: handle("p:2"),
                task_id: "kept".into(),
                holds_resources: true,
                keep_until: Some(chrono_time(110 + 600)),
            },
        ]
    );
}

#[test]
fn the_buildspec_embeds_the_runner_script_verbatim() {
    let script = include_str!("../../../../../infra/runner.sh");
    let start = "cat > /tmp/taskrunner/runner.sh <<'TASKRUNNER_RUNNER_EOF'\n";
    let (_, rest) = RUNNER_BUILDSPEC.split_once(start).expect("heredoc start");
    let (embedded, _) = rest
        .split_once("        TASKRUNNER_RUNNER_EOF\n")
        .expect("heredoc end");
    let unindented: String = embedded
        .lines()
        .map(|line| line.strip_prefix("        ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(unindented, script);
    assert!(RUNNER_BUILDSPEC.contains("version: 0.2"));
    assert!(RUNNER_BUILDSPEC.contains("shell: bash"));
}
