//! `Retry` and `Catch`: which error a retrier or catcher takes, and how long a retry waits.

use std::time::Duration;

use serde_json::Value;

use super::error::{ALL, HEARTBEAT_TIMEOUT, RUNTIME, TASK_FAILED, TIMEOUT};
use super::path::JsonPath;

/// One entry of `Retry`.
#[derive(Clone, Debug, PartialEq)]
pub struct Retrier {
    /// Error names it takes.
    pub error_equals: Vec<String>,
    /// Seconds before the first retry (default 1).
    pub interval_seconds: f64,
    /// Retries at most (default 3; 0 never retries).
    pub max_attempts: u32,
    /// Factor the delay grows by with each retry (default 2.0).
    pub backoff_rate: f64,
    /// Upper bound on a delay, if any.
    pub max_delay_seconds: Option<f64>,
    /// `FULL` jitter: each delay is uniform in `[0, delay]`.
    pub full_jitter: bool,
}

/// One entry of `Catch`.
#[derive(Clone, Debug, PartialEq)]
pub struct Catcher {
    /// Error names it takes.
    pub error_equals: Vec<String>,
    /// Where the `{"Error", "Cause"}` object goes in the state input; `None` discards it.
    pub result_path: Option<JsonPath>,
    /// The state to go to.
    pub next: String,
}

fn error_equals(raw: &Value, what: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = raw
        .get("ErrorEquals")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("every {what} needs an \"ErrorEquals\" array"))?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{what} \"ErrorEquals\" must hold strings"))?;
    if names.is_empty() {
        return Err(format!("{what} \"ErrorEquals\" must not be empty"));
    }
    if names.iter().any(|n| n == ALL) && names.len() > 1 {
        return Err(format!(
            "{what}: \"States.ALL\" must be the only name in its ErrorEquals"
        ));
    }
    Ok(names)
}

/// `States.ALL` may only appear in the last entry of a Retry or Catch list.
fn check_all_is_last(lists: &[&[String]], what: &str) -> Result<(), String> {
    let last = lists.len().saturating_sub(1);
    match lists
        .iter()
        .position(|names| names.iter().any(|n| n == ALL))
    {
        Some(i) if i != last => Err(format!("{what}: the \"States.ALL\" entry must come last")),
        _ => Ok(()),
    }
}

fn number(raw: &Value, key: &str) -> Result<Option<f64>, String> {
    match raw.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| *n >= 0.0)
            .map(Some)
            .ok_or_else(|| format!("Retry \"{key}\" must be a non-negative number, not {v}")),
    }
}

/// Parses a `Retry` array.
pub fn parse_retriers(raw: Option<&Value>) -> Result<Vec<Retrier>, String> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let items = raw.as_array().ok_or("\"Retry\" must be an array")?;
    let mut retriers = Vec::new();
    for item in items {
        let backoff_rate = number(item, "BackoffRate")?.unwrap_or(2.0);
        if backoff_rate < 1.0 {
            return Err("Retry \"BackoffRate\" must be at least 1.0".into());
        }
        let full_jitter = match item.get("JitterStrategy").map(|v| v.as_str()) {
            None | Some(Some("NONE")) => false,
            Some(Some("FULL")) => true,
            Some(other) => {
                return Err(format!(
                    "Retry \"JitterStrategy\" must be \"FULL\" or \"NONE\", not {other:?}"
                ));
            }
        };
        let max_attempts = number(item, "MaxAttempts")?.unwrap_or(3.0);
        retriers.push(Retrier {
            error_equals: error_equals(item, "Retry entry")?,
            interval_seconds: number(item, "IntervalSeconds")?.unwrap_or(1.0),
            max_attempts: max_attempts.min(f64::from(u32::MAX)) as u32,
            backoff_rate,
            max_delay_seconds: number(item, "MaxDelaySeconds")?,
            full_jitter,
        });
    }
    let lists: Vec<&[String]> = retriers.iter().map(|r| r.error_equals.as_slice()).collect();
    check_all_is_last(&lists, "Retry")?;
    Ok(retriers)
}

/// Parses a `Catch` array.
pub fn parse_catchers(raw: Option<&Value>) -> Result<Vec<Catcher>, String> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let items = raw.as_array().ok_or("\"Catch\" must be an array")?;
    let mut catchers = Vec::new();
    for item in items {
        let next = item
            .get("Next")
            .and_then(Value::as_str)
            .ok_or("every Catch entry needs a \"Next\" string")?;
        let result_path = match item.get("ResultPath") {
            None => Some(JsonPath::parse("$")?),
            Some(Value::Null) => None,
            Some(Value::String(path)) => Some(JsonPath::parse(path)?),
            Some(other) => {
                return Err(format!(
                    "Catch \"ResultPath\" must be a path or null, not {other}"
                ));
            }
        };
        catchers.push(Catcher {
            error_equals: error_equals(item, "Catch entry")?,
            result_path,
            next: next.to_string(),
        });
    }
    let lists: Vec<&[String]> = catchers.iter().map(|c| c.error_equals.as_slice()).collect();
    check_all_is_last(&lists, "Catch")?;
    Ok(catchers)
}

/// Whether an `ErrorEquals` list takes `error`. `States.Runtime` is terminal: nothing takes it.
pub fn matches(error_equals: &[String], error: &str) -> bool {
    if error == RUNTIME {
        return false;
    }
    let timeout = error == TIMEOUT || error == HEARTBEAT_TIMEOUT;
    error_equals.iter().any(|name| {
        name == error
            || name == ALL
            || (name == TASK_FAILED && !timeout)
            || (name == TIMEOUT && error == HEARTBEAT_TIMEOUT)
    })
}

/// The index of the first retrier that takes `error`.
pub fn find_retrier(retriers: &[Retrier], error: &str) -> Option<usize> {
    retriers
        .iter()
        .position(|r| matches(&r.error_equals, error))
}

/// The first catcher that takes `error`.
pub fn find_catcher<'a>(catchers: &'a [Catcher], error: &str) -> Option<&'a Catcher> {
    catchers.iter().find(|c| matches(&c.error_equals, error))
}

impl Retrier {
    /// The delay before retry number `done + 1`, with `random` uniform in `[0, 1)` used for
    /// `FULL` jitter.
    pub fn delay(&self, done: u32, random: f64) -> Duration {
        let exponent = i32::try_from(done).unwrap_or(i32::MAX);
        let mut seconds = self.interval_seconds * self.backoff_rate.powi(exponent);
        if let Some(max) = self.max_delay_seconds {
            seconds = seconds.min(max);
        }
        if self.full_jitter {
            seconds *= random.clamp(0.0, 1.0);
        }
        // Step Functions caps delays at a year; this also keeps the value finite.
        Duration::from_secs_f64(seconds.clamp(0.0, 366.0 * 86_400.0))
    }
}

/// A random number uniform in `[0, 1)` from the operating system.
pub fn random_unit() -> f64 {
    let bits = getrandom::u64().unwrap_or(u64::MAX / 2);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_backoff_with_cap() {
        let retriers = parse_retriers(Some(&json!([{"ErrorEquals": ["A"]}]))).expect("parse");
        let r = &retriers[0];
        assert_eq!(
            (r.interval_seconds, r.max_attempts, r.backoff_rate),
            (1.0, 3, 2.0)
        );
        assert_eq!(r.delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(r.delay(2, 0.5), Duration::from_secs(4));

        let capped = parse_retriers(Some(&json!([{
            "ErrorEquals": ["A"], "IntervalSeconds": 5, "BackoffRate": 3, "MaxDelaySeconds": 30
        }])))
        .expect("parse");
        let delays: Vec<u64> = (0..4).map(|n| capped[0].delay(n, 0.0).as_secs()).collect();
        assert_eq!(delays, vec![5, 15, 30, 30]);
    }

    #[test]
    fn full_jitter_scales_the_delay() {
        let r = &parse_retriers(Some(&json!([{
            "ErrorEquals": ["A"], "IntervalSeconds": 10, "JitterStrategy": "FULL"
        }])))
        .expect("parse")[0];
        assert_eq!(r.delay(1, 0.0), Duration::ZERO);
        assert_eq!(r.delay(1, 0.25), Duration::from_secs(5));
        for _ in 0..100 {
            let random = random_unit();
            assert!((0.0..1.0).contains(&random));
        }
    }

    #[test]
    fn error_matching_rules() {
        let all = vec![ALL.to_string()];
        let task_failed = vec![TASK_FAILED.to_string()];
        assert!(matches(&all, "Anything"));
        assert!(matches(&all, TIMEOUT));
        assert!(!matches(&all, RUNTIME));
        assert!(matches(&task_failed, "My.Error"));
        assert!(!matches(&task_failed, TIMEOUT));
        assert!(!matches(&task_failed, HEARTBEAT_TIMEOUT));
        let timeout = vec![TIMEOUT.to_string()];
        let heartbeat = vec![HEARTBEAT_TIMEOUT.to_string()];
        assert!(matches(&timeout, HEARTBEAT_TIMEOUT));
        assert!(!matches(&heartbeat, TIMEOUT));
        assert!(matches(&heartbeat, HEARTBEAT_TIMEOUT));
        assert!(matches(&["X".to_string()], "X"));
        assert!(!matches(&["X".to_string()], "Y"));
    }

    #[test]
    fn states_all_must_be_alone_and_last() {
        assert!(
            parse_catchers(Some(&json!([
                {"ErrorEquals": ["States.ALL"], "Next": "A"},
                {"ErrorEquals": ["X"], "Next": "B"}
            ])))
            .is_err()
        );
        assert!(parse_retriers(Some(&json!([{"ErrorEquals": ["States.ALL", "X"]}]))).is_err());
        let ok = parse_catchers(Some(&json!([
            {"ErrorEquals": ["X"], "Next": "B", "ResultPath": null},
            {"ErrorEquals": ["States.ALL"], "Next": "A"}
        ])))
        .expect("parse");
        assert_eq!(ok[0].result_path, None);
        assert_eq!(
            find_catcher(&ok, "Other").map(|c| c.next.as_str()),
            Some("A")
        );
    }
}
