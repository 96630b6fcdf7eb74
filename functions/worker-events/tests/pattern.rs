//! The EventBridge rule of `template.yaml` (`WorkerEventsFunction`'s `WorkerEnded`) against
//! CodeBuild events in the shape the CodeBuild user guide documents
//! (`sample-build-notifications-ref`): it matches the end of a build of the worker project,
//! whatever its status, and the end of its BUILD phase, and nothing else. The matching is
//! moto's EventBridge pattern matcher (`tests/support/template.py match-events`), and every
//! event the rule delivers is one the function reads.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use taskrunner::steps::WorkerEvent;

const PROJECT: &str = "taskrunner-workers";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Whether the rule matches each event, in order.
fn rule_matches(events: &[Value]) -> Vec<bool> {
    let mut child = Command::new("python3")
        .arg(root().join("tests/support/template.py"))
        .arg("match-events")
        .arg(root().join("template.yaml"))
        .args(["worker-events", "WorkerEnded"])
        .arg(json!({"WorkerProject": PROJECT}).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    for event in events {
        writeln!(stdin, "{event}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the pattern matcher failed (moto 5.2.6 installed? `.ci/run` installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line == "true")
        .collect()
}

fn with(mut event: Value, changes: &[(&str, Value)]) -> Value {
    for (pointer, value) in changes {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        event.pointer_mut(parent).unwrap()[key] = value.clone();
    }
    event
}

#[test]
fn the_rule_delivers_a_workers_end_and_nothing_else() {
    let state = sample("build-state-change.json");
    let phase = sample("build-phase-change.json");
    let mut cases: Vec<(&str, Value, bool)> = Vec::new();
    for status in ["SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT", "FAULT"] {
        let event = with(state.clone(), &[("/detail/build-status", json!(status))]);
        cases.push(("a build that ended", event, true));
    }
    cases.push((
        "the end of BUILD (a kept worker's task)",
        phase.clone(),
        true,
    ));
    cases.push((
        "a BUILD phase that failed",
        with(
            phase.clone(),
            &[("/detail/completed-phase-status", json!("FAILED"))],
        ),
        true,
    ));
    cases.push((
        "a build that started",
        with(
            state.clone(),
            &[("/detail/build-status", json!("IN_PROGRESS"))],
        ),
        false,
    ));
    for other in ["PROVISIONING", "POST_BUILD", "FINALIZING", "COMPLETED"] {
        let event = with(phase.clone(), &[("/detail/completed-phase", json!(other))]);
        cases.push(("another phase's end", event, false));
    }
    cases.push((
        "another project's build",
        with(state.clone(), &[("/detail/project-name", json!("other"))]),
        false,
    ));
    cases.push((
        "another project's BUILD phase",
        with(phase.clone(), &[("/detail/project-name", json!("other"))]),
        false,
    ));
    cases.push((
        "a fleet event",
        with(
            state.clone(),
            &[("/detail-type", json!("CodeBuild Fleet State Change"))],
        ),
        false,
    ));
    cases.push((
        "another source",
        with(state.clone(), &[("/source", json!("custom.codebuild"))]),
        false,
    ));

    let events: Vec<Value> = cases.iter().map(|(_, event, _)| event.clone()).collect();
    let matched = rule_matches(&events);
    assert_eq!(matched.len(), cases.len(), "one answer per event");
    for ((what, event, expected), matched) in cases.iter().zip(&matched) {
        assert_eq!(
            matched,
            expected,
            "{what}: the rule should {}match {event}",
            if *expected { "" } else { "not " }
        );
        if *matched {
            let read = WorkerEvent::parse(event, PROJECT)
                .unwrap_or_else(|why| panic!("{what}: delivered but not read: {why}"));
            assert_eq!(read.task_id.as_str(), "model-deployment-task-1", "{what}");
            assert_eq!(
                read.build_id,
                "taskrunner-workers:3f6c2b1e-8d7a-4e5f-9c0b-1a2d3e4f5a6b"
            );
        }
    }
}
