//! Payload templates (`Parameters`, `ResultSelector`): a JSON value copied as is, except
//! that a key ending in `.$` takes its value from a path into the input, a `$$.` path into
//! the context object, or an intrinsic function call.

use serde_json::{Map, Value};

use super::error::StateError;
use super::intrinsic;
use super::path::JsonPath;

/// The value at `path` in `input`, or in `context` when the path starts with `$$`.
pub fn resolve(path: &str, input: &Value, context: &Value) -> Result<Value, StateError> {
    let (doc, path_text) = match path.strip_prefix("$$") {
        Some(rest) => (context, format!("${rest}")),
        None => (input, path.to_string()),
    };
    let parsed = JsonPath::parse(&path_text).map_err(StateError::runtime)?;
    parsed.select(doc).cloned().ok_or_else(|| {
        StateError::runtime(format!(
            "the JSONPath {path:?} could not be found in the input {}",
            compact(doc)
        ))
    })
}

/// `template` with every `.$` key filled in from `input` and `context`.
pub fn apply_template(
    template: &Value,
    input: &Value,
    context: &Value,
) -> Result<Value, StateError> {
    match template {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                match key.strip_suffix(".$") {
                    Some(name) => {
                        let expr = value.as_str().ok_or_else(|| {
                            StateError::runtime(format!(
                                "the value of {key:?} must be a path or an intrinsic function, not {value}"
                            ))
                        })?;
                        out.insert(name.to_string(), evaluate(expr, input, context)?);
                    }
                    None => {
                        out.insert(key.clone(), apply_template(value, input, context)?);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|item| apply_template(item, input, context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// The value of a `.$` key: a path, a context path, or an intrinsic function call.
fn evaluate(expr: &str, input: &Value, context: &Value) -> Result<Value, StateError> {
    if expr.starts_with('$') {
        resolve(expr, input, context)
    } else {
        intrinsic::call(expr, input, context)
    }
}

/// A short rendering of a document for error causes.
pub fn compact(doc: &Value) -> String {
    let text = doc.to_string();
    if text.len() <= 200 {
        return text;
    }
    let mut end = 200;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_paths_context_paths_and_nested_objects() {
        // From the AWS docs' InputPath/Parameters example.
        let input = json!({
            "comment": "Example for Parameters.",
            "product": {
                "details": {"color": "blue", "size": "small", "material": "cotton"},
                "availability": "in stock", "sku": "2317", "cost": "$23"
            }
        });
        let template = json!({
            "comment": "Selecting what I care about.",
            "MyDetails": {
                "size.$": "$.product.details.size",
                "exists.$": "$.product.availability",
                "StaticValue": "foo"
            },
            "name.$": "$$.Execution.Name"
        });
        let context = json!({"Execution": {"Name": "run-1"}});
        let out = apply_template(&template, &input, &context).expect("template");
        assert_eq!(
            out,
            json!({
                "comment": "Selecting what I care about.",
                "MyDetails": {"size": "small", "exists": "in stock", "StaticValue": "foo"},
                "name": "run-1"
            })
        );
    }

    #[test]
    fn result_selector_over_a_lambda_result() {
        let result = json!({"ExecutedVersion": "$LATEST", "Payload": {"done": true, "n": 3}, "StatusCode": 200});
        let selector = json!({"done.$": "$.Payload.done", "list": [{"n.$": "$.Payload.n"}]});
        let out = apply_template(&selector, &result, &json!({})).expect("template");
        assert_eq!(out, json!({"done": true, "list": [{"n": 3}]}));
    }

    #[test]
    fn a_missing_path_is_a_runtime_error_naming_the_path() {
        let err = apply_template(&json!({"x.$": "$.nope"}), &json!({"a": 1}), &json!({}))
            .expect_err("missing");
        assert_eq!(err.error, "States.Runtime");
        assert!(err.cause.contains("$.nope"), "{}", err.cause);
    }
}
