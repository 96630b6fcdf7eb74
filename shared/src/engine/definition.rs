//! The state machine definition: ASL JSON, after `${Name}` substitutions, parsed into typed
//! states once, and checked (known state types, every `Next` exists).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::choice::{self, ChoiceRule};
use super::path::JsonPath;
use super::retry::{self, Catcher, Retrier};

/// A parsed, checked state machine.
#[derive(Clone, Debug)]
pub struct Definition {
    /// The first state.
    pub start_at: String,
    /// States by name.
    pub states: HashMap<String, State>,
}

/// Where a state goes when it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// To the named state.
    Next(String),
    /// The execution succeeds with the state's output.
    End,
}

/// The path fields shared by most states. `None` is an explicit `null`.
#[derive(Clone, Debug)]
pub struct Io {
    /// `InputPath` (default `$`; null gives `{}`).
    pub input_path: Option<JsonPath>,
    /// `OutputPath` (default `$`; null gives `{}`).
    pub output_path: Option<JsonPath>,
    /// `ResultPath` (default `$`; null discards the result).
    pub result_path: Option<JsonPath>,
    /// `Parameters` template.
    pub parameters: Option<Value>,
    /// `ResultSelector` template.
    pub result_selector: Option<Value>,
}

/// One state.
#[derive(Clone, Debug)]
pub struct State {
    /// Its path fields.
    pub io: Io,
    /// What it does.
    pub kind: StateKind,
}

/// How long a Wait state waits.
#[derive(Clone, Debug)]
pub enum WaitFor {
    /// `Seconds`.
    Seconds(u64),
    /// `SecondsPath`.
    SecondsPath(JsonPath),
    /// `Timestamp`.
    Timestamp(DateTime<Utc>),
    /// `TimestampPath`.
    TimestampPath(JsonPath),
}

/// A Task's time limit: written in the definition, or read from the state input.
#[derive(Clone, Debug)]
pub enum Limit {
    /// `TimeoutSeconds` / `HeartbeatSeconds`.
    Seconds(u64),
    /// `TimeoutSecondsPath` / `HeartbeatSecondsPath`.
    Path(JsonPath),
}

/// What a state does.
#[derive(Clone, Debug)]
pub enum StateKind {
    /// Calls a handler.
    Task {
        /// `Resource`.
        resource: String,
        /// `TimeoutSeconds` or `TimeoutSecondsPath`.
        timeout: Option<Limit>,
        /// `HeartbeatSeconds` or `HeartbeatSecondsPath`.
        heartbeat: Option<Limit>,
        /// `Retry`.
        retry: Vec<Retrier>,
        /// `Catch`.
        catch: Vec<Catcher>,
        /// Where next.
        transition: Transition,
    },
    /// Waits.
    Wait {
        /// For how long.
        wait: WaitFor,
        /// Where next.
        transition: Transition,
    },
    /// Branches.
    Choice {
        /// The rules, in order.
        rules: Vec<ChoiceRule>,
        /// Where to go when no rule holds.
        default: Option<String>,
    },
    /// Passes its input (or `Result`) on.
    Pass {
        /// `Result`.
        result: Option<Value>,
        /// Where next.
        transition: Transition,
    },
    /// Ends the execution successfully.
    Succeed,
    /// Ends the execution as failed.
    Fail {
        /// `Error`, or `ErrorPath`.
        error: Option<ErrorSource>,
        /// `Cause`, or `CausePath`.
        cause: Option<ErrorSource>,
    },
}

/// A Fail state's error or cause: literal or taken from the input.
#[derive(Clone, Debug)]
pub enum ErrorSource {
    /// Written in the definition.
    Literal(String),
    /// A path into the state input.
    Path(JsonPath),
}

impl StateKind {
    /// The prefix of its history event names: `Task`, `Wait`, ...
    pub fn event_prefix(&self) -> &'static str {
        match self {
            StateKind::Task { .. } => "Task",
            StateKind::Wait { .. } => "Wait",
            StateKind::Choice { .. } => "Choice",
            StateKind::Pass { .. } => "Pass",
            StateKind::Succeed => "Succeed",
            StateKind::Fail { .. } => "Fail",
        }
    }
}

/// Replaces every `${Name}` in `text` with its substitution; unknown names stay as written.
pub fn substitute(text: &str, substitutions: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in substitutions {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

impl Definition {
    /// Parses and checks a definition; the error names the state and the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        if raw.get("QueryLanguage").and_then(Value::as_str) == Some("JSONata") {
            return Err("QueryLanguage JSONata is not supported; use JSONPath".into());
        }
        let start_at = raw
            .get("StartAt")
            .and_then(Value::as_str)
            .ok_or("\"StartAt\" (a state name) is missing")?
            .to_string();
        let raw_states = raw
            .get("States")
            .and_then(Value::as_object)
            .ok_or("\"States\" (an object of states) is missing")?;
        let mut states = HashMap::new();
        for (name, raw_state) in raw_states {
            let state = parse_state(raw_state).map_err(|e| format!("state {name:?}: {e}"))?;
            states.insert(name.clone(), state);
        }
        let definition = Self { start_at, states };
        definition.check_targets()?;
        Ok(definition)
    }

    fn check_targets(&self) -> Result<(), String> {
        let known = |target: &str, from: &str| {
            if self.states.contains_key(target) {
                Ok(())
            } else {
                Err(format!(
                    "state {from:?}: goes to {target:?}, which is not a state"
                ))
            }
        };
        known(&self.start_at, "StartAt")?;
        for (name, state) in &self.states {
            let mut targets: Vec<&str> = Vec::new();
            match &state.kind {
                StateKind::Task {
                    transition, catch, ..
                } => {
                    targets.extend(catch.iter().map(|c| c.next.as_str()));
                    if let Transition::Next(next) = transition {
                        targets.push(next);
                    }
                }
                StateKind::Wait { transition, .. } | StateKind::Pass { transition, .. } => {
                    if let Transition::Next(next) = transition {
                        targets.push(next);
                    }
                }
                StateKind::Choice { rules, default } => {
                    targets.extend(rules.iter().map(|r| r.next.as_str()));
                    targets.extend(default.as_deref());
                }
                StateKind::Succeed | StateKind::Fail { .. } => {}
            }
            for target in targets {
                known(target, name)?;
            }
        }
        Ok(())
    }

    /// The state named `name`.
    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }
}

fn optional_path(raw: &Value, key: &str) -> Result<Option<JsonPath>, String> {
    match raw.get(key) {
        None => JsonPath::parse("$").map(Some),
        Some(Value::Null) => Ok(None),
        Some(Value::String(path)) => JsonPath::parse(path).map(Some),
        Some(other) => Err(format!(
            "\"{key}\" must be a path string or null, not {other}"
        )),
    }
}

fn transition(raw: &Value) -> Result<Transition, String> {
    match (raw.get("Next").and_then(Value::as_str), raw.get("End")) {
        (Some(next), None) => Ok(Transition::Next(next.to_string())),
        (None, Some(Value::Bool(true))) => Ok(Transition::End),
        _ => Err("needs exactly one of \"Next\" (a state name) or \"End\": true".into()),
    }
}

fn path_field(raw: &Value, key: &str) -> Result<Option<JsonPath>, String> {
    raw.get(key)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| format!("\"{key}\" must be a path string"))
                .and_then(JsonPath::parse)
        })
        .transpose()
}

fn error_source(raw: &Value, key: &str) -> Result<Option<ErrorSource>, String> {
    if let Some(path) = path_field(raw, &format!("{key}Path"))? {
        return Ok(Some(ErrorSource::Path(path)));
    }
    raw.get(key)
        .map(|v| {
            v.as_str()
                .map(|s| ErrorSource::Literal(s.to_string()))
                .ok_or_else(|| format!("\"{key}\" must be a string"))
        })
        .transpose()
}

fn parse_state(raw: &Value) -> Result<State, String> {
    let kind_name = raw
        .get("Type")
        .and_then(Value::as_str)
        .ok_or("\"Type\" is missing")?;
    let io = Io {
        input_path: optional_path(raw, "InputPath")?,
        output_path: optional_path(raw, "OutputPath")?,
        result_path: optional_path(raw, "ResultPath")?,
        parameters: raw.get("Parameters").cloned(),
        result_selector: raw.get("ResultSelector").cloned(),
    };
    let kind = match kind_name {
        "Task" => StateKind::Task {
            resource: raw
                .get("Resource")
                .and_then(Value::as_str)
                .ok_or("a Task needs a \"Resource\" string")?
                .to_string(),
            timeout: limit(raw, "Timeout")?,
            heartbeat: limit(raw, "Heartbeat")?,
            retry: retry::parse_retriers(raw.get("Retry"))?,
            catch: retry::parse_catchers(raw.get("Catch"))?,
            transition: transition(raw)?,
        },
        "Wait" => StateKind::Wait {
            wait: parse_wait(raw)?,
            transition: transition(raw)?,
        },
        "Choice" => StateKind::Choice {
            rules: raw
                .get("Choices")
                .and_then(Value::as_array)
                .filter(|rules| !rules.is_empty())
                .ok_or("a Choice needs a non-empty \"Choices\" array")?
                .iter()
                .map(choice::parse_rule)
                .collect::<Result<_, _>>()?,
            default: raw
                .get("Default")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        "Pass" => StateKind::Pass {
            result: raw.get("Result").cloned(),
            transition: transition(raw)?,
        },
        "Succeed" => StateKind::Succeed,
        "Fail" => StateKind::Fail {
            error: error_source(raw, "Error")?,
            cause: error_source(raw, "Cause")?,
        },
        other => {
            return Err(format!(
                "state type {other:?} is not supported; use Task, Wait, Choice, Pass, Succeed or Fail"
            ));
        }
    };
    if let StateKind::Task {
        timeout: Some(Limit::Seconds(timeout)),
        heartbeat: Some(Limit::Seconds(heartbeat)),
        ..
    } = &kind
        && heartbeat >= timeout
    {
        return Err(format!(
            "\"HeartbeatSeconds\" ({heartbeat}) must be smaller than \"TimeoutSeconds\" ({timeout})"
        ));
    }
    Ok(State { io, kind })
}

/// `{name}Seconds` or `{name}SecondsPath`, not both.
fn limit(raw: &Value, name: &str) -> Result<Option<Limit>, String> {
    let key = format!("{name}Seconds");
    let path_key = format!("{name}SecondsPath");
    match (raw.get(&key), path_field(raw, &path_key)?) {
        (Some(_), Some(_)) => Err(format!(
            "\"{key}\" and \"{path_key}\" cannot both be given; keep one"
        )),
        (Some(v), None) => v
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| Some(Limit::Seconds(n)))
            .ok_or_else(|| format!("\"{key}\" must be a positive integer")),
        (None, path) => Ok(path.map(Limit::Path)),
    }
}

fn parse_wait(raw: &Value) -> Result<WaitFor, String> {
    if let Some(seconds) = raw.get("Seconds") {
        return seconds
            .as_u64()
            .map(WaitFor::Seconds)
            .ok_or_else(|| "\"Seconds\" must be a non-negative integer".to_string());
    }
    if let Some(path) = path_field(raw, "SecondsPath")? {
        return Ok(WaitFor::SecondsPath(path));
    }
    if let Some(stamp) = raw.get("Timestamp") {
        return stamp
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| WaitFor::Timestamp(t.with_timezone(&Utc)))
            .ok_or_else(|| "\"Timestamp\" must be an RFC 3339 timestamp".to_string());
    }
    if let Some(path) = path_field(raw, "TimestampPath")? {
        return Ok(WaitFor::TimestampPath(path));
    }
    Err("a Wait needs Seconds, SecondsPath, Timestamp or TimestampPath".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_real_definition_after_substitutions() {
        let text = include_str!("../../../infra/state-machine.asl.json");
        let subs = HashMap::from([("SubmitFunctionArn".to_string(), "submit".to_string())]);
        let substituted = substitute(text, &subs);
        assert!(substituted.contains("\"submit\""));
        let definition = Definition::parse(&substituted).expect("definition");
        assert_eq!(definition.start_at, "Submit");
        assert_eq!(definition.states.len(), 7);
        let Some(StateKind::Task { retry, catch, .. }) =
            definition.state("Submit").map(|s| &s.kind)
        else {
            panic!("Submit is not a Task");
        };
        assert_eq!(retry[0].max_attempts, 4);
        assert!(retry[0].full_jitter);
        assert_eq!(catch[0].next, "FinishAndCallback");
    }

    #[test]
    fn rejects_unknown_types_and_dangling_next() {
        let unknown = r#"{"StartAt": "A", "States": {"A": {"Type": "Map", "End": true}}}"#;
        let err = Definition::parse(unknown).expect_err("unknown type");
        assert!(err.contains("\"A\"") && err.contains("Map"), "{err}");

        let dangling = r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}}}"#;
        let err = Definition::parse(dangling).expect_err("dangling");
        assert!(err.contains("\"B\""), "{err}");

        let no_start = r#"{"StartAt": "Z", "States": {"A": {"Type": "Succeed"}}}"#;
        assert!(Definition::parse(no_start).is_err());

        let both =
            r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "A", "End": true}}}"#;
        assert!(Definition::parse(both).is_err());
    }

    #[test]
    fn timeouts_are_one_of_seconds_or_path_and_heartbeats_come_first() {
        let task = |fields: &str| {
            format!(
                r#"{{"StartAt": "A", "States": {{"A": {{"Type": "Task", "Resource": "r", {fields}, "End": true}}}}}}"#
            )
        };
        let both = task(r#""TimeoutSeconds": 5, "TimeoutSecondsPath": "$.t""#);
        let err = Definition::parse(&both).expect_err("both");
        assert!(err.contains("TimeoutSecondsPath"), "{err}");
        let late = task(r#""TimeoutSeconds": 5, "HeartbeatSeconds": 5"#);
        let err = Definition::parse(&late).expect_err("heartbeat not below timeout");
        assert!(err.contains("HeartbeatSeconds"), "{err}");
        let zero = task(r#""HeartbeatSeconds": 0"#);
        assert!(Definition::parse(&zero).is_err());
        let fine = task(r#""TimeoutSecondsPath": "$.t", "HeartbeatSeconds": 5"#);
        let definition = Definition::parse(&fine).expect("valid");
        let Some(StateKind::Task {
            timeout: Some(Limit::Path(_)),
            heartbeat: Some(Limit::Seconds(5)),
            ..
        }) = definition.state("A").map(|s| &s.kind)
        else {
            panic!("limits not parsed");
        };
    }
}
