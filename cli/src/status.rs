//! `taskrunner status`: one task's status, its current state and time in it, and its state
//! history, for a person; `--json` prints the API's status object for scripts.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::ApiArgs;
use crate::client::Api;
use crate::list::{colour_of, span};

/// A duration for a person: tenths of a second below ten seconds, else as the list shows it.
fn spent(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{seconds:.1}s")
    } else {
        span(seconds)
    }
}

/// `taskrunner status ID [--json]`.
pub async fn status(task_id: &str, json: bool, args: &ApiArgs) -> Result<ExitCode> {
    let api = Api::new(args)?;
    let status = api
        .expect_ok(
            reqwest::Method::GET,
            &format!("/task-runner/{task_id}"),
            None,
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let history = api
        .expect_ok(
            reqwest::Method::GET,
            &format!("/task-runner/{task_id}/history"),
            None,
        )
        .await?;
    let colour = std::io::stdout().is_terminal();
    print!("{}", render(&status, &history, Utc::now(), colour));
    Ok(ExitCode::SUCCESS)
}

/// Whether a history event is the entry into a state.
fn enters_state(event: &Value) -> bool {
    event["event_type"]
        .as_str()
        .is_some_and(|kind| kind.ends_with("StateEntered"))
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

/// The status and history as text: a headline, the facts, then one line per state entered
/// (with the time spent in it) and per failure.
fn render(status: &Value, history: &Value, now: DateTime<Utc>, colour: bool) -> String {
    let text = |key: &str| status[key].as_str().unwrap_or("-");
    let word = text("status");
    let shown = if colour {
        format!("{}{word}\x1b[0m", colour_of(word))
    } else {
        word.to_owned()
    };
    let mut out = format!(
        "{}  {shown}  {}  {}\n",
        text("task_id"),
        text("task_name"),
        text("worker_size")
    );
    let events: &[Value] = history["events"].as_array().map_or(&[], Vec::as_slice);
    let entered: Vec<(DateTime<Utc>, &str)> = events
        .iter()
        .filter(|event| enters_state(event))
        .filter_map(|event| Some((time(&event["timestamp"])?, event["state"].as_str()?)))
        .collect();
    let done = status["done"].as_bool().unwrap_or(false);
    let submitted = time(&status["submitted_at"]);
    let finished = time(&status["finished_at"]);
    if let Some(submitted) = submitted {
        let end = finished.unwrap_or(now);
        let verb = if done { "took" } else { "running for" };
        let _ = writeln!(
            out,
            "  {verb} {} since submitted at {}",
            spent((end - submitted).num_milliseconds().max(0) as f64 / 1000.0),
            submitted.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    if !done && let Some((since, state)) = entered.last() {
        let _ = writeln!(
            out,
            "  now in {state} for {}",
            spent((now - *since).num_milliseconds().max(0) as f64 / 1000.0)
        );
    }
    if let Some(code) = status["exit_code"].as_i64() {
        let _ = writeln!(out, "  exit code {code}");
    }
    if let Some(reason) = status["reason"].as_str() {
        let _ = writeln!(out, "  {reason}");
    }
    if let Some(parent) = status["parent_task_id"].as_str() {
        let _ = writeln!(out, "  started by task {parent}");
    }
    let children: &[Value] = status["children"].as_array().map_or(&[], Vec::as_slice);
    if !children.is_empty() {
        out.push_str("\nCHILDREN\n");
        for child in children {
            let _ = writeln!(
                out,
                "  {}  {}",
                child["task_id"].as_str().unwrap_or("-"),
                child["status"].as_str().unwrap_or("-")
            );
        }
    }
    out.push_str("\nHISTORY\n");
    for (index, event) in events.iter().enumerate() {
        let Some(at) = time(&event["timestamp"]) else {
            continue;
        };
        let kind = event["event_type"].as_str().unwrap_or_default();
        let state = event["state"].as_str().unwrap_or("");
        let line = if enters_state(event) {
            // Time in the state: until the next state is entered, the end, or now.
            let left = events[index + 1..]
                .iter()
                .find(|next| enters_state(next))
                .and_then(|next| time(&next["timestamp"]))
                .or(finished)
                .unwrap_or(now);
            let spent = spent((left - at).num_milliseconds().max(0) as f64 / 1000.0);
            format!("{state:<24} {spent}")
        } else if let Some(error) = event["error"].as_str() {
            let cause = event["cause"].as_str().unwrap_or("");
            format!("{:<24} {kind}: {error} {cause}", state)
        } else if kind.starts_with("Execution") {
            kind.to_owned()
        } else {
            continue;
        };
        let _ = writeln!(out, "  {}  {}", at.format("%H:%M:%S%.3f"), line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: i64) -> String {
        (DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(seconds)).to_rfc3339()
    }

    #[test]
    fn a_running_task_shows_its_current_state_elapsed_time_and_history() {
        let status = json!({"task_id": "build-7", "task_name": "build.sh", "worker_size": "Small",
            "status": "running", "done": false, "submitted_at": at(0)});
        let history = json!({"events": [
            {"timestamp": at(0), "event_type": "ExecutionStarted"},
            {"timestamp": at(0), "event_type": "TaskStateEntered", "state": "Submit"},
            {"timestamp": at(2), "event_type": "TaskFailed", "state": "Submit", "error": "TaskRunner.Transient", "cause": "busy"},
            {"timestamp": at(5), "event_type": "WaitStateEntered", "state": "WaitForWorker"},
        ]});
        let now = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(75);
        let text = render(&status, &history, now, false);
        assert!(
            text.starts_with("build-7  running  build.sh  Small\n"),
            "{text}"
        );
        assert!(text.contains("running for 1m15s since submitted"), "{text}");
        assert!(text.contains("now in WaitForWorker for 1m10s"), "{text}");
        assert!(
            text.contains("00:00:00.000  Submit                   5.0s"),
            "{text}"
        );
        assert!(
            text.contains(
                "00:00:02.000  Submit                   TaskFailed: TaskRunner.Transient busy"
            ),
            "{text}"
        );
        assert!(
            text.contains("00:00:05.000  WaitForWorker            1m10s"),
            "{text}"
        );
    }

    #[test]
    fn an_ended_task_shows_how_long_it_took_and_no_current_state() {
        let status = json!({"task_id": "t", "task_name": "t.py", "worker_size": "X-Small",
            "status": "failed", "done": true, "exit_code": 1, "submitted_at": at(0), "finished_at": at(30)});
        let history = json!({"events": [
            {"timestamp": at(0), "event_type": "TaskStateEntered", "state": "Submit"},
            {"timestamp": at(30), "event_type": "ExecutionSucceeded"},
        ]});
        let text = render(&status, &history, DateTime::<Utc>::UNIX_EPOCH, true);
        assert!(text.contains("\x1b[31mfailed\x1b[0m"), "{text}");
        assert!(text.contains("took 30s since submitted"), "{text}");
        assert!(!text.contains("now in"), "{text}");
        assert!(text.contains("exit code 1"), "{text}");
        assert!(
            text.contains("00:00:00.000  Submit                   30s"),
            "{text}"
        );
        assert!(text.contains("00:00:30.000  ExecutionSucceeded"), "{text}");
    }
}
