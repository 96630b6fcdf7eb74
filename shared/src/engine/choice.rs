//! Choice rules: comparisons of a `Variable` against a literal or another path, type tests,
//! and `And`/`Or`/`Not` combinations.

use chrono::DateTime;
use serde_json::Value;

use super::error::StateError;
use super::path::JsonPath;

/// A top-level rule: a condition and the state to go to when it holds.
#[derive(Clone, Debug)]
pub struct ChoiceRule {
    /// The condition.
    pub condition: Condition,
    /// Where to go when it holds.
    pub next: String,
}

/// A condition over the Choice state's input.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Every condition holds.
    And(Vec<Condition>),
    /// At least one holds.
    Or(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// `Variable` compared by `op` with `operand`.
    Compare {
        /// The path compared.
        variable: JsonPath,
        /// The operator, such as `NumericLessThan`.
        op: Op,
        /// A literal, or a path when the operator ends in `Path`.
        operand: Operand,
    },
}

/// What a comparison compares against.
#[derive(Clone, Debug)]
pub enum Operand {
    /// A literal from the definition.
    Literal(Value),
    /// A path into the input (`...Path` operators).
    Path(JsonPath),
}

/// A comparison or type test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// String comparisons.
    StringEquals,
    #[allow(missing_docs)]
    StringLessThan,
    #[allow(missing_docs)]
    StringGreaterThan,
    #[allow(missing_docs)]
    StringLessThanEquals,
    #[allow(missing_docs)]
    StringGreaterThanEquals,
    /// Glob match where `*` is any run of characters and `\*` a star.
    StringMatches,
    /// Numeric comparisons.
    NumericEquals,
    #[allow(missing_docs)]
    NumericLessThan,
    #[allow(missing_docs)]
    NumericGreaterThan,
    #[allow(missing_docs)]
    NumericLessThanEquals,
    #[allow(missing_docs)]
    NumericGreaterThanEquals,
    /// Boolean equality.
    BooleanEquals,
    /// Timestamp comparisons (RFC 3339).
    TimestampEquals,
    #[allow(missing_docs)]
    TimestampLessThan,
    #[allow(missing_docs)]
    TimestampGreaterThan,
    #[allow(missing_docs)]
    TimestampLessThanEquals,
    #[allow(missing_docs)]
    TimestampGreaterThanEquals,
    /// Type tests: the operand is `true` or `false`.
    IsPresent,
    #[allow(missing_docs)]
    IsNull,
    #[allow(missing_docs)]
    IsString,
    #[allow(missing_docs)]
    IsNumeric,
    #[allow(missing_docs)]
    IsBoolean,
    #[allow(missing_docs)]
    IsTimestamp,
}

const OPS: &[(&str, Op)] = &[
    ("StringEquals", Op::StringEquals),
    ("StringLessThan", Op::StringLessThan),
    ("StringGreaterThan", Op::StringGreaterThan),
    ("StringLessThanEquals", Op::StringLessThanEquals),
    ("StringGreaterThanEquals", Op::StringGreaterThanEquals),
    ("StringMatches", Op::StringMatches),
    ("NumericEquals", Op::NumericEquals),
    ("NumericLessThan", Op::NumericLessThan),
    ("NumericGreaterThan", Op::NumericGreaterThan),
    ("NumericLessThanEquals", Op::NumericLessThanEquals),
    ("NumericGreaterThanEquals", Op::NumericGreaterThanEquals),
    ("BooleanEquals", Op::BooleanEquals),
    ("TimestampEquals", Op::TimestampEquals),
    ("TimestampLessThan", Op::TimestampLessThan),
    ("TimestampGreaterThan", Op::TimestampGreaterThan),
    ("TimestampLessThanEquals", Op::TimestampLessThanEquals),
    ("TimestampGreaterThanEquals", Op::TimestampGreaterThanEquals),
    ("IsPresent", Op::IsPresent),
    ("IsNull", Op::IsNull),
    ("IsString", Op::IsString),
    ("IsNumeric", Op::IsNumeric),
    ("IsBoolean", Op::IsBoolean),
    ("IsTimestamp", Op::IsTimestamp),
];

/// Parses one entry of `Choices` (with `Next`).
pub fn parse_rule(raw: &Value) -> Result<ChoiceRule, String> {
    let next = raw
        .get("Next")
        .and_then(Value::as_str)
        .ok_or("every Choices rule needs a \"Next\" string")?;
    Ok(ChoiceRule {
        condition: parse_condition(raw)?,
        next: next.to_string(),
    })
}

fn parse_condition(raw: &Value) -> Result<Condition, String> {
    let map = raw.as_object().ok_or("a Choice rule must be an object")?;
    if let Some(list) = map.get("And").or_else(|| map.get("Or")) {
        let items = list
            .as_array()
            .filter(|items| !items.is_empty())
            .ok_or("\"And\"/\"Or\" take a non-empty array of rules")?
            .iter()
            .map(parse_condition)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if map.contains_key("And") {
            Condition::And(items)
        } else {
            Condition::Or(items)
        });
    }
    if let Some(inner) = map.get("Not") {
        return Ok(Condition::Not(Box::new(parse_condition(inner)?)));
    }
    let variable = map
        .get("Variable")
        .and_then(Value::as_str)
        .ok_or("a Choice rule needs \"Variable\" (or And/Or/Not)")?;
    let variable = JsonPath::parse(variable)?;
    for (name, op) in OPS {
        if let Some(value) = map.get(*name) {
            return Ok(Condition::Compare {
                variable,
                op: *op,
                operand: Operand::Literal(check_literal(name, *op, value)?),
            });
        }
        if let Some(value) = map.get(&format!("{name}Path")) {
            let path = value
                .as_str()
                .ok_or_else(|| format!("\"{name}Path\" must be a path string"))?;
            return Ok(Condition::Compare {
                variable,
                op: *op,
                operand: Operand::Path(JsonPath::parse(path)?),
            });
        }
    }
    let keys: Vec<&String> = map.keys().collect();
    Err(format!(
        "Choice rule with keys {keys:?} has no known comparison (StringEquals, NumericLessThan, IsPresent, ...)"
    ))
}

fn check_literal(name: &str, op: Op, value: &Value) -> Result<Value, String> {
    let ok = match op {
        Op::NumericEquals
        | Op::NumericLessThan
        | Op::NumericGreaterThan
        | Op::NumericLessThanEquals
        | Op::NumericGreaterThanEquals => value.is_number(),
        Op::BooleanEquals
        | Op::IsPresent
        | Op::IsNull
        | Op::IsString
        | Op::IsNumeric
        | Op::IsBoolean
        | Op::IsTimestamp => value.is_boolean(),
        _ => value.is_string(),
    };
    if ok {
        Ok(value.clone())
    } else {
        Err(format!("\"{name}\" has a value of the wrong type: {value}"))
    }
}

/// The `Next` of the first rule that holds for `input`, if any.
pub fn first_match<'a>(
    rules: &'a [ChoiceRule],
    input: &Value,
) -> Result<Option<&'a str>, StateError> {
    for rule in rules {
        if holds(&rule.condition, input)? {
            return Ok(Some(&rule.next));
        }
    }
    Ok(None)
}

/// Whether `condition` holds for `input`. A missing variable is an error except for
/// `IsPresent`, as in Step Functions.
pub fn holds(condition: &Condition, input: &Value) -> Result<bool, StateError> {
    match condition {
        Condition::And(items) => {
            for item in items {
                if !holds(item, input)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Condition::Or(items) => {
            for item in items {
                if holds(item, input)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Condition::Not(inner) => Ok(!holds(inner, input)?),
        Condition::Compare {
            variable,
            op,
            operand,
        } => {
            let found = variable.select(input);
            let expected = match operand {
                Operand::Literal(value) => value.clone(),
                Operand::Path(path) => path.select(input).cloned().ok_or_else(|| {
                    StateError::runtime(format!(
                        "Choice: the path {:?} could not be found in the input",
                        path.as_str()
                    ))
                })?,
            };
            if *op == Op::IsPresent {
                return Ok(found.is_some() == (expected == Value::Bool(true)));
            }
            let actual = found.ok_or_else(|| {
                StateError::runtime(format!(
                    "Choice: invalid path {:?}: the choice state could not find this path in its input",
                    variable.as_str()
                ))
            })?;
            Ok(compare(*op, actual, &expected))
        }
    }
}

fn compare(op: Op, actual: &Value, expected: &Value) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let is_timestamp = |v: &Value| {
        v.as_str()
            .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
    };
    let type_test = |t: bool| expected.as_bool() == Some(t);
    let ordering = match op {
        Op::IsNull => return type_test(actual.is_null()),
        Op::IsString => return type_test(actual.is_string()),
        Op::IsNumeric => return type_test(actual.is_number()),
        Op::IsBoolean => return type_test(actual.is_boolean()),
        Op::IsTimestamp => return type_test(is_timestamp(actual)),
        Op::IsPresent => return true,
        Op::BooleanEquals => {
            return actual.is_boolean() && actual.as_bool() == expected.as_bool();
        }
        Op::StringMatches => {
            return match (actual.as_str(), expected.as_str()) {
                (Some(text), Some(pattern)) => glob(pattern, text),
                _ => false,
            };
        }
        Op::StringEquals
        | Op::StringLessThan
        | Op::StringGreaterThan
        | Op::StringLessThanEquals
        | Op::StringGreaterThanEquals => match (actual.as_str(), expected.as_str()) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => return false,
        },
        Op::NumericEquals
        | Op::NumericLessThan
        | Op::NumericGreaterThan
        | Op::NumericLessThanEquals
        | Op::NumericGreaterThanEquals => match (actual.as_f64(), expected.as_f64()) {
            (Some(a), Some(b)) => match a.partial_cmp(&b) {
                Some(ordering) => ordering,
                None => return false,
            },
            _ => return false,
        },
        Op::TimestampEquals
        | Op::TimestampLessThan
        | Op::TimestampGreaterThan
        | Op::TimestampLessThanEquals
        | Op::TimestampGreaterThanEquals => {
            let parse = |v: &Value| {
                v.as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            };
            match (parse(actual), parse(expected)) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => return false,
            }
        }
    };
    match op {
        Op::StringEquals | Op::NumericEquals | Op::TimestampEquals => ordering == Equal,
        Op::StringLessThan | Op::NumericLessThan | Op::TimestampLessThan => ordering == Less,
        Op::StringGreaterThan | Op::NumericGreaterThan | Op::TimestampGreaterThan => {
            ordering == Greater
        }
        Op::StringLessThanEquals | Op::NumericLessThanEquals | Op::TimestampLessThanEquals => {
            ordering != Greater
        }
        _ => ordering != Less,
    }
}

/// `*` matches any run of characters; `\*` and `\\` are literal.
fn glob(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Token {
        Star,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => tokens.push(Token::Char(chars.next().unwrap_or('\\'))),
            '*' => tokens.push(Token::Star),
            c => tokens.push(Token::Char(c)),
        }
    }
    let text: Vec<char> = text.chars().collect();
    // Classic two-pointer wildcard matching with backtracking to the last star.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            Some(Token::Star) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|token| *token == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(rule: Value, input: Value) -> Result<bool, StateError> {
        let mut rule = rule;
        rule["Next"] = json!("X");
        let parsed = parse_rule(&rule).map_err(StateError::runtime)?;
        holds(&parsed.condition, &input)
    }

    #[test]
    fn comparisons_against_literals_and_paths() {
        let input = json!({"s": "beta", "n": 5, "m": 5.0, "b": true, "t": "2024-01-02T00:00:00Z"});
        let cases = [
            (json!({"Variable": "$.s", "StringEquals": "beta"}), true),
            (json!({"Variable": "$.s", "StringLessThan": "gamma"}), true),
            (
                json!({"Variable": "$.s", "StringGreaterThanEquals": "beta"}),
                true,
            ),
            (json!({"Variable": "$.s", "StringMatches": "b*a"}), true),
            (json!({"Variable": "$.s", "StringMatches": "*x*"}), false),
            (json!({"Variable": "$.n", "NumericEquals": 5}), true),
            (json!({"Variable": "$.n", "NumericLessThan": 5}), false),
            (json!({"Variable": "$.n", "NumericLessThanEquals": 5}), true),
            (json!({"Variable": "$.n", "NumericGreaterThan": 4.5}), true),
            (json!({"Variable": "$.n", "NumericEqualsPath": "$.m"}), true),
            (json!({"Variable": "$.b", "BooleanEquals": true}), true),
            (json!({"Variable": "$.b", "BooleanEqualsPath": "$.b"}), true),
            (json!({"Variable": "$.s", "StringEqualsPath": "$.s"}), true),
            (json!({"Variable": "$.s", "NumericEquals": 5}), false),
            (
                json!({"Variable": "$.t", "TimestampGreaterThan": "2024-01-01T00:00:00Z"}),
                true,
            ),
            (json!({"Variable": "$.t", "IsTimestamp": true}), true),
            (json!({"Variable": "$.missing", "IsPresent": false}), true),
            (json!({"Variable": "$.s", "IsPresent": true}), true),
            (json!({"Variable": "$.s", "IsString": true}), true),
            (json!({"Variable": "$.n", "IsNumeric": false}), false),
            (json!({"Variable": "$.b", "IsBoolean": true}), true),
            (json!({"Variable": "$.s", "IsNull": false}), true),
        ];
        for (rule, expected) in cases {
            assert_eq!(
                check(rule.clone(), input.clone()).expect("rule"),
                expected,
                "{rule}"
            );
        }
    }

    #[test]
    fn and_or_not() {
        let input = json!({"n": 7, "s": "x"});
        let rule = json!({"And": [
            {"Variable": "$.n", "NumericGreaterThan": 5},
            {"Not": {"Variable": "$.s", "StringEquals": "y"}},
            {"Or": [
                {"Variable": "$.n", "NumericEquals": 1},
                {"Variable": "$.s", "IsPresent": true}
            ]}
        ]});
        assert!(check(rule, input.clone()).expect("and"));
        let rule = json!({"Or": [{"Variable": "$.n", "NumericLessThan": 0}, {"Variable": "$.s", "StringEquals": "z"}]});
        assert!(!check(rule, input).expect("or"));
    }

    #[test]
    fn a_missing_variable_is_a_runtime_error() {
        let err = check(
            json!({"Variable": "$.nope", "StringEquals": "a"}),
            json!({}),
        )
        .expect_err("missing");
        assert_eq!(err.error, "States.Runtime");
        assert!(err.cause.contains("$.nope"));
    }

    #[test]
    fn malformed_rules_are_rejected() {
        assert!(parse_rule(&json!({"Variable": "$.a", "Next": "X"})).is_err());
        assert!(
            parse_rule(&json!({"Variable": "$.a", "NumericEquals": "1", "Next": "X"})).is_err()
        );
        assert!(parse_rule(&json!({"Variable": "$.a", "StringEquals": "1"})).is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob("log-*.txt", "log-2024.txt"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("lit\\*", "lit*"));
        assert!(!glob("lit\\*", "litX"));
    }
}
