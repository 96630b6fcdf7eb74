use std::time::Duration;

use aws_sdk_sfn::error::ErrorMetadata;
use aws_sdk_sfn::operation::describe_execution::{DescribeExecutionError, DescribeExecutionOutput};
use aws_sdk_sfn::operation::get_execution_history::GetExecutionHistoryOutput;
use aws_sdk_sfn::operation::start_execution::StartExecutionError;
use aws_sdk_sfn::primitives::DateTime as SdkDateTime;
use aws_sdk_sfn::types::{HistoryEventType, StateEnteredEventDetails};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use serde_json::json;

use super::*;
use crate::adapters::aws::testing::Moto;

const MACHINE: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:taskrunner";

/// A trivial Pass -> Succeed machine: moto records executions, it does not run them.
async fn create_machine(client: &Client) -> String {
    let definition = json!({
        "StartAt": "Submit",
        "States": {
            "Submit": {"Type": "Pass", "Next": "Done"},
            "Done": {"Type": "Succeed"}
        }
    });
    client
        .create_state_machine()
        .name("taskrunner")
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/taskrunner-states")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_owned()
}

#[tokio::test]
async fn start_describe_list_and_stop_against_moto() {
    let moto = Moto::start();
    let client = moto.step_functions();
    let arn = create_machine(&client).await;
    let sfn = StepFunctions::new(client, arn);
    let input = json!({"task": {"task_id": "t1", "task_file": "run.py"}});

    assert_eq!(sfn.describe("t1").await.unwrap(), None);
    assert_eq!(
        sfn.start("t1", &input).await.unwrap(),
        StartOutcome::Started
    );
    // Step Functions hands back the running execution for the same name and input; the
    // pause puts its start date clearly before the second call.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        sfn.start("t1", &input).await.unwrap(),
        StartOutcome::AlreadyExists
    );
    let other = json!({"task": {"task_id": "t1", "task_file": "other.py"}});
    assert_eq!(
        sfn.start("t1", &other).await.unwrap(),
        StartOutcome::Conflict
    );

    let view = sfn.describe("t1").await.unwrap().expect("described");
    assert_eq!(view.name, "t1");
    assert_eq!(view.status, ExecutionStatus::Running);
    assert_eq!(view.input, input);
    assert_eq!(view.stopped_at, None);

    assert_eq!(
        sfn.start("t2", &json!({"n": 2})).await.unwrap(),
        StartOutcome::Started
    );
    let names = |views: Vec<ExecutionView>| views.into_iter().map(|v| v.name).collect::<Vec<_>>();
    assert_eq!(names(sfn.list(None, 10).await.unwrap()), ["t2", "t1"]);
    assert_eq!(names(sfn.list(None, 1).await.unwrap()), ["t2"]);
    assert!(sfn.list(None, 0).await.unwrap().is_empty());

    sfn.stop("t1", "Cancelled", "cancelled by a user")
        .await
        .unwrap();
    let stopped = sfn.describe("t1").await.unwrap().expect("described");
    assert_eq!(stopped.status, ExecutionStatus::Aborted);
    assert!(stopped.stopped_at.is_some());
    assert_eq!(
        names(sfn.list(Some(ExecutionStatus::Running), 10).await.unwrap()),
        ["t2"]
    );
    assert_eq!(
        names(sfn.list(Some(ExecutionStatus::Aborted), 10).await.unwrap()),
        ["t1"]
    );

    // Finished: Step Functions refuses the name; the input decides the answer.
    assert_eq!(
        sfn.start("t1", &input).await.unwrap(),
        StartOutcome::AlreadyExists
    );
    assert_eq!(
        sfn.start("t1", &other).await.unwrap(),
        StartOutcome::Conflict
    );

    let err = sfn.stop("missing", "Cancelled", "").await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(sfn.purge_finished(Utc::now()).await.unwrap(), 0);
}

#[test]
fn execution_arns_come_from_the_state_machine_arn() {
    let client = mock_client!(aws_sdk_sfn, []);
    let sfn = StepFunctions::new(client.clone(), MACHINE);
    assert_eq!(
        sfn.execution_arn("t1").unwrap(),
        "arn:aws:states:us-east-1:123456789012:execution:taskrunner:t1"
    );
    let version = StepFunctions::new(client.clone(), format!("{MACHINE}:3"));
    assert_eq!(
        version.execution_arn("t1").unwrap(),
        "arn:aws:states:us-east-1:123456789012:execution:taskrunner:t1"
    );
    let bad = StepFunctions::new(client, "taskrunner");
    let err = bad.execution_arn("t1").unwrap_err();
    assert!(err.to_string().contains("stateMachine:NAME"), "{err}");
}

fn entered(id: i64, state: &str, input: &str) -> HistoryEvent {
    HistoryEvent::builder()
        .id(id)
        .timestamp(SdkDateTime::from_secs(1_700_000_000 + id))
        .r#type(HistoryEventType::TaskStateEntered)
        .state_entered_event_details(
            StateEnteredEventDetails::builder()
                .name(state)
                .input(input)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn event(id: i64, kind: HistoryEventType) -> HistoryEvent {
    HistoryEvent::builder()
        .id(id)
        .timestamp(SdkDateTime::from_secs(1_700_000_000 + id))
        .r#type(kind)
        .build()
        .unwrap()
}

#[tokio::test]
async fn describe_takes_the_current_state_from_the_latest_state_entered() {
    let described = mock!(Client::describe_execution).then_output(|| {
        DescribeExecutionOutput::builder()
            .execution_arn(format!("{MACHINE}:t1"))
            .state_machine_arn(MACHINE)
            .name("t1")
            .status(SfnStatus::Running)
            .start_date(SdkDateTime::from_secs(1_700_000_000))
            .input(r#"{"task":{"task_id":"t1"}}"#)
            .build()
            .unwrap()
    });
    let history = mock!(Client::get_execution_history)
        .match_requests(|req| req.reverse_order() == Some(true))
        .then_output(|| {
            GetExecutionHistoryOutput::builder()
                .events(event(9, HistoryEventType::TaskScheduled))
                .events(entered(
                    8,
                    "PollWorker",
                    r#"{"run":{"worker":{"backend":"codebuild","id":"b:1"}}}"#,
                ))
                .events(event(7, HistoryEventType::WaitStateExited))
                .events(entered(6, "WaitForWorker", "{}"))
                .build()
                .unwrap()
        });
    let client = mock_client!(aws_sdk_sfn, RuleMode::Sequential, [&described, &history]);
    let view = StepFunctions::new(client, MACHINE)
        .describe("t1")
        .await
        .unwrap()
        .expect("described");
    assert_eq!(view.current_state.as_deref(), Some("PollWorker"));
    assert_eq!(
        view.state_input,
        Some(json!({"run": {"worker": {"backend": "codebuild", "id": "b:1"}}}))
    );
    assert_eq!(view.input, json!({"task": {"task_id": "t1"}}));
    assert_eq!(view.history_events, 9);
    assert_eq!(view.transitions, 2);
    assert_eq!(view.status, ExecutionStatus::Running);
}

#[test]
fn transitions_are_estimated_beyond_the_page() {
    let page = [
        event(100, HistoryEventType::TaskScheduled),
        entered(99, "PollWorker", "{}"),
        event(98, HistoryEventType::WaitStateExited),
        entered(97, "WaitForWorker", "{}"),
    ];
    let latest = LatestState::from_page(&page, true);
    assert_eq!(latest.history_events, 100);
    assert_eq!(latest.transitions, 50);
    assert_eq!(LatestState::from_page(&page, false).transitions, 2);
    assert_eq!(LatestState::from_page(&[], false), LatestState::default());
}

fn no_retries(builder: aws_sdk_sfn::config::Builder) -> aws_sdk_sfn::config::Builder {
    builder.retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled())
}

#[tokio::test]
async fn a_throttled_start_is_transient() {
    let absent = mock!(Client::describe_execution).then_error(|| {
        DescribeExecutionError::ExecutionDoesNotExist(
            aws_sdk_sfn::types::error::ExecutionDoesNotExist::builder()
                .message("Execution Does Not Exist")
                .build(),
        )
    });
    let throttled = mock!(Client::start_execution).then_error(|| {
        StartExecutionError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build(),
        )
    });
    let client = mock_client!(
        aws_sdk_sfn,
        RuleMode::Sequential,
        [&absent, &throttled],
        no_retries
    );
    let err = StepFunctions::new(client, MACHINE)
        .start("t1", &json!({}))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("states:StartExecution"), "{err}");
}

#[tokio::test]
async fn access_denied_is_permanent_and_names_the_operation() {
    let denied = mock!(Client::describe_execution).then_error(|| {
        DescribeExecutionError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("User is not authorized to perform: states:DescribeExecution")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_sfn, RuleMode::Sequential, [&denied], no_retries);
    let err = StepFunctions::new(client, MACHINE)
        .describe("t1")
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(text.contains("AccessDeniedException"), "{text}");
    assert!(
        text.contains("grant the IAM permission states:DescribeExecution"),
        "{text}"
    );
}

#[tokio::test]
async fn pages_follow_next_token_and_filter_against_moto() {
    let moto = Moto::start();
    let client = moto.step_functions();
    let arn = create_machine(&client).await;
    let sfn = StepFunctions::new(client, arn);
    for name in ["build-1", "deploy-1", "build-2", "build-3", "build-4"] {
        assert_eq!(
            sfn.start(name, &json!({"task": {"task_id": name}}))
                .await
                .unwrap(),
            StartOutcome::Started
        );
    }
    sfn.stop("build-4", "Cancelled", "").await.unwrap();

    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let query = PageQuery {
            limit: 2,
            token: token.take(),
            ..PageQuery::default()
        };
        let page = sfn.page(&query).await.unwrap();
        assert!(page.executions.len() <= 2);
        seen.extend(page.executions.into_iter().map(|v| v.name));
        match page.next_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["build-1", "build-2", "build-3", "build-4", "deploy-1"]
    );

    let running = PageQuery {
        status: Some(ExecutionStatus::Running),
        prefix: Some("build-".into()),
        limit: 10,
        ..PageQuery::default()
    };
    let mut names: Vec<String> = sfn
        .page(&running)
        .await
        .unwrap()
        .executions
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    assert_eq!(names, ["build-1", "build-2", "build-3"]);

    let later = PageQuery {
        since: Some(Utc::now() + chrono::Duration::hours(1)),
        limit: 10,
        ..PageQuery::default()
    };
    let page = sfn.page(&later).await.unwrap();
    assert!(page.executions.is_empty());
    assert_eq!(page.next_token, None);

    let bad = PageQuery {
        limit: 10,
        token: Some("not-a-token".into()),
        ..PageQuery::default()
    };
    let err = sfn.page(&bad).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}
