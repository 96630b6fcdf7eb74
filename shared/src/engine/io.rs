//! Input and output processing: `InputPath`, `ResultPath`, `OutputPath`, and the context
//! object that `$$.` paths read.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::error::{RESULT_PATH_MATCH_FAILURE, StateError};
use super::path::JsonPath;
use super::payload::compact;

/// The value `path` selects from `doc`; `None` (an explicit null) gives `{}`.
pub fn select(path: Option<&JsonPath>, doc: &Value, field: &str) -> Result<Value, StateError> {
    let Some(path) = path else {
        return Ok(json!({}));
    };
    path.select(doc).cloned().ok_or_else(|| {
        StateError::runtime(format!(
            "{field}: the JSONPath {:?} could not be found in {}",
            path.as_str(),
            compact(doc)
        ))
    })
}

/// `raw` with `result` placed at `path`; `None` (an explicit null) keeps `raw` unchanged.
pub fn place(path: Option<&JsonPath>, raw: &Value, result: Value) -> Result<Value, StateError> {
    match path {
        None => Ok(raw.clone()),
        Some(path) => path
            .place(raw.clone(), result)
            .map_err(|cause| StateError::new(RESULT_PATH_MATCH_FAILURE, cause)),
    }
}

/// A time as Step Functions writes it: `2024-01-02T03:04:05.678Z`.
pub fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What `$$.` paths read while a state runs.
pub struct Context<'a> {
    /// Execution name.
    pub name: &'a str,
    /// Execution input.
    pub input: &'a Value,
    /// Execution start.
    pub started_at: DateTime<Utc>,
    /// Current state.
    pub state: &'a str,
    /// When it was entered.
    pub entered_at: DateTime<Utc>,
    /// Retries so far in this state.
    pub retry_count: u32,
    /// The task token of a `.waitForTaskToken` attempt (`$$.Task.Token`).
    pub task_token: Option<&'a str>,
}

impl Context<'_> {
    /// The context object.
    pub fn to_value(&self) -> Value {
        let mut context = json!({
            "Execution": {
                "Id": format!("arn:aws:states:local:0:execution:taskrunner:{}", self.name),
                "Name": self.name,
                "Input": self.input,
                "StartTime": timestamp(self.started_at),
                "RoleArn": "arn:aws:iam::0:role/local",
            },
            "State": {
                "Name": self.state,
                "EnteredTime": timestamp(self.entered_at),
                "RetryCount": self.retry_count,
            },
            "StateMachine": {
                "Id": "arn:aws:states:local:0:stateMachine:taskrunner",
                "Name": "taskrunner",
            },
        });
        if let (Some(token), Value::Object(fields)) = (self.task_token, &mut context) {
            fields.insert("Task".into(), json!({ "Token": token }));
        }
        context
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).expect("path")
    }

    #[test]
    fn result_path_examples_from_the_aws_docs() {
        let input = json!({"comment": "This is a test of the input and output of a Task state.", "details": "Default example", "who": "AWS Step Functions"});
        let result = json!("Hello, AWS Step Functions!");
        // ResultPath "$": the result replaces the input.
        assert_eq!(
            place(Some(&path("$")), &input, result.clone()).expect("$"),
            result
        );
        // ResultPath "$.taskresult": the result is added to the input.
        let mut expected = input.clone();
        expected["taskresult"] = result.clone();
        assert_eq!(
            place(Some(&path("$.taskresult")), &input, result.clone()).expect("add"),
            expected
        );
        // ResultPath null: the result is discarded.
        assert_eq!(place(None, &input, result).expect("null"), input);
    }

    #[test]
    fn input_and_output_paths() {
        let doc = json!({"a": {"b": 1}});
        assert_eq!(
            select(Some(&path("$.a")), &doc, "InputPath").expect("a"),
            json!({"b": 1})
        );
        assert_eq!(select(None, &doc, "OutputPath").expect("null"), json!({}));
        let err = select(Some(&path("$.x")), &doc, "InputPath").expect_err("missing");
        assert_eq!(err.error, "States.Runtime");
        assert!(err.cause.starts_with("InputPath"));
    }
}
