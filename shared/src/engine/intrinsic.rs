//! Intrinsic functions in `.$` values: `States.Format`, `States.StringToJson`,
//! `States.JsonToString`, `States.Array`, `States.ArrayLength`, `States.ArrayGetItem` and
//! `States.MathAdd`. Arguments are string literals in single quotes, numbers, `true`,
//! `false`, `null`, paths (`$.a`, `$$.Execution.Name`) or nested calls.

use serde_json::Value;

use super::error::StateError;
use super::payload::resolve;

/// An argument as written.
#[derive(Debug)]
enum Expr {
    /// A string literal: its text with escapes resolved, and as written (for `States.Format`).
    Str {
        value: String,
        raw: String,
    },
    Literal(Value),
    Path(String),
    Call(String, Vec<Expr>),
}

/// Evaluates the intrinsic function call `text`.
pub fn call(text: &str, input: &Value, context: &Value) -> Result<Value, StateError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        pos: 0,
        text,
    };
    let expr = parser.expr()?;
    parser.skip_spaces();
    if parser.pos != parser.chars.len() || !matches!(expr, Expr::Call(..)) {
        return Err(parser.error("expected a single call such as States.Format('{}', $.a)"));
    }
    eval(&expr, input, context)
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> StateError {
        StateError::new(
            "States.IntrinsicFailure",
            format!("intrinsic {:?} at offset {}: {what}", self.text, self.pos),
        )
    }

    fn skip_spaces(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn expr(&mut self) -> Result<Expr, StateError> {
        self.skip_spaces();
        match self.chars.get(self.pos) {
            Some('\'') => self.string(),
            Some('$') => Ok(Expr::Path(self.word())),
            Some(_) => {
                let word = self.word();
                if word.is_empty() {
                    return Err(self.error("expected an argument"));
                }
                self.skip_spaces();
                if self.chars.get(self.pos) == Some(&'(') {
                    self.pos += 1;
                    return Ok(Expr::Call(word, self.arguments()?));
                }
                serde_json::from_str::<Value>(&word)
                    .ok()
                    .filter(|v| !v.is_string() && !v.is_object() && !v.is_array())
                    .map(Expr::Literal)
                    .ok_or_else(|| self.error(&format!("{word:?} is not a literal, path or call")))
            }
            None => Err(self.error("unexpected end")),
        }
    }

    /// A path, number, keyword or function name: everything up to a delimiter.
    fn word(&mut self) -> String {
        let start = self.pos;
        let mut depth = 0;
        while let Some(&c) = self.chars.get(self.pos) {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' | ')' | '(' if depth == 0 => break,
                c if c.is_whitespace() && depth == 0 => break,
                _ => {}
            }
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn string(&mut self) -> Result<Expr, StateError> {
        self.pos += 1;
        let (mut value, mut raw) = (String::new(), String::new());
        loop {
            match self.chars.get(self.pos).copied() {
                Some('\\') => {
                    let escaped = self
                        .chars
                        .get(self.pos + 1)
                        .copied()
                        .ok_or_else(|| self.error("string ends in a backslash"))?;
                    raw.push('\\');
                    raw.push(escaped);
                    value.push(escaped);
                    self.pos += 2;
                }
                Some('\'') => {
                    self.pos += 1;
                    return Ok(Expr::Str { value, raw });
                }
                Some(c) => {
                    raw.push(c);
                    value.push(c);
                    self.pos += 1;
                }
                None => return Err(self.error("string literal without its closing quote")),
            }
        }
    }

    fn arguments(&mut self) -> Result<Vec<Expr>, StateError> {
        let mut args = Vec::new();
        self.skip_spaces();
        if self.chars.get(self.pos) == Some(&')') {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            self.skip_spaces();
            match self.chars.get(self.pos) {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(args);
                }
                _ => return Err(self.error("expected ',' or ')'")),
            }
        }
    }
}

fn failure(name: &str, what: &str) -> StateError {
    StateError::new("States.IntrinsicFailure", format!("{name}: {what}"))
}

fn eval(expr: &Expr, input: &Value, context: &Value) -> Result<Value, StateError> {
    match expr {
        Expr::Str { value, .. } => Ok(Value::String(value.clone())),
        Expr::Literal(value) => Ok(value.clone()),
        Expr::Path(path) => resolve(path, input, context),
        Expr::Call(name, args) => {
            let values = args
                .iter()
                .map(|arg| eval(arg, input, context))
                .collect::<Result<Vec<_>, _>>()?;
            apply(name, args, values)
        }
    }
}

fn apply(name: &str, args: &[Expr], values: Vec<Value>) -> Result<Value, StateError> {
    match name {
        "States.Format" => {
            let Some(Expr::Str { raw, .. }) = args.first() else {
                return Err(failure(name, "the first argument must be a string literal"));
            };
            format(name, raw, &values[1..])
        }
        "States.StringToJson" => match values.as_slice() {
            [Value::String(text)] => serde_json::from_str(text)
                .map_err(|e| failure(name, &format!("the argument is not JSON: {e}"))),
            _ => Err(failure(name, "takes one string argument")),
        },
        "States.JsonToString" => match values.as_slice() {
            [value] => Ok(Value::String(value.to_string())),
            _ => Err(failure(name, "takes one argument")),
        },
        "States.Array" => Ok(Value::Array(values)),
        "States.ArrayLength" => match values.as_slice() {
            [Value::Array(items)] => Ok(Value::from(items.len())),
            _ => Err(failure(name, "takes one array argument")),
        },
        "States.ArrayGetItem" => match values.as_slice() {
            [Value::Array(items), Value::Number(index)] => index
                .as_u64()
                .and_then(|i| items.get(usize::try_from(i).ok()?))
                .cloned()
                .ok_or_else(|| failure(name, "index out of range")),
            _ => Err(failure(name, "takes an array and an index")),
        },
        "States.MathAdd" => match values.as_slice() {
            [Value::Number(a), Value::Number(b)] => match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => Ok(Value::from(a.saturating_add(b))),
                _ => Err(failure(name, "takes two integers")),
            },
            _ => Err(failure(name, "takes two integers")),
        },
        other => Err(failure(other, "unknown intrinsic function")),
    }
}

/// `States.Format`: each `{}` in the template takes the next argument; `\{` is a brace.
fn format(name: &str, raw: &str, values: &[Value]) -> Result<Value, StateError> {
    let mut out = String::new();
    let mut next = values.iter();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '{' if chars.peek() == Some(&'}') => {
                chars.next();
                let value = next
                    .next()
                    .ok_or_else(|| failure(name, "more {} than arguments"))?;
                match value {
                    Value::String(s) => out.push_str(s),
                    Value::Object(_) | Value::Array(_) => {
                        return Err(failure(
                            name,
                            "arguments must be strings, numbers, booleans or null",
                        ));
                    }
                    other => out.push_str(&other.to_string()),
                }
            }
            c => out.push(c),
        }
    }
    if next.next().is_some() {
        return Err(failure(name, "more arguments than {}"));
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(text: &str, input: &Value) -> Result<Value, StateError> {
        call(text, input, &json!({"Execution": {"Name": "exec-9"}}))
    }

    #[test]
    fn format_fills_placeholders_and_keeps_escaped_braces() {
        let input = json!({"name": "Ana", "n": 3});
        assert_eq!(
            run(
                "States.Format('Hello, {}: {} \\{x\\} in {}', $.name, $.n, $$.Execution.Name)",
                &input
            )
            .expect("format"),
            json!("Hello, Ana: 3 {x} in exec-9")
        );
        assert!(run("States.Format('{} {}', $.name)", &input).is_err());
    }

    #[test]
    fn json_conversions_and_arrays() {
        let input = json!({"s": "{\"a\":[1,2]}", "obj": {"b": true}});
        assert_eq!(
            run("States.StringToJson($.s)", &input).expect("s2j"),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            run("States.JsonToString($.obj)", &input).expect("j2s"),
            json!("{\"b\":true}")
        );
        assert_eq!(
            run("States.Array('a', 1, true, null, $.obj)", &input).expect("array"),
            json!(["a", 1, true, null, {"b": true}])
        );
        assert_eq!(
            run("States.ArrayLength(States.Array(1, 2, 3))", &input).expect("len"),
            json!(3)
        );
        assert_eq!(
            run("States.MathAdd(40, 2)", &input).expect("add"),
            json!(42)
        );
    }

    #[test]
    fn unknown_functions_and_bad_syntax_fail_clearly() {
        let err = run("States.Nope(1)", &json!({})).expect_err("unknown");
        assert_eq!(err.error, "States.IntrinsicFailure");
        assert!(err.cause.contains("States.Nope"));
        assert!(run("States.Array(1", &json!({})).is_err());
        assert!(run("States.Format('x", &json!({})).is_err());
    }
}
