//! The JSONPath subset ASL needs: `$`, `$.a.b`, `$.a[0]`, `$['a b']`.
//!
//! Paths select a value from a document (`InputPath`, `OutputPath`, `.$` keys, Choice
//! variables) or, as reference paths, say where to put one (`ResultPath`), creating
//! intermediate objects on the way. Filters, wildcards and slices are not supported.

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(usize),
}

/// A parsed path such as `$.run.wait_seconds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
}

impl JsonPath {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix('$').ok_or_else(|| {
            format!("path {text:?}: must start with '$' (for example \"$.field\")")
        })?;
        let chars: Vec<char> = rest.chars().collect();
        let mut segments = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                        end += 1;
                    }
                    if end == start {
                        return Err(format!("path {text:?}: empty field name after '.'"));
                    }
                    let field: String = chars[start..end].iter().collect();
                    if field == "*" {
                        return Err(format!("path {text:?}: wildcards are not supported"));
                    }
                    segments.push(Segment::Field(field));
                    i = end;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| p + i)
                        .ok_or_else(|| format!("path {text:?}: '[' without a closing ']'"))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    segments.push(parse_bracket(text, &inner)?);
                    i = close + 1;
                }
                c => {
                    return Err(format!(
                        "path {text:?}: unexpected {c:?}; use '.field', '[0]' or \"['field']\""
                    ));
                }
            }
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `doc`, or `None` when there is none.
    pub fn select<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut current = doc;
        for segment in &self.segments {
            current = match segment {
                Segment::Field(name) => current.as_object()?.get(name)?,
                Segment::Index(index) => current.as_array()?.get(*index)?,
            };
        }
        Some(current)
    }

    /// `doc` with `value` placed at this path, creating missing objects on the way. Fails
    /// when the path crosses something that is not an object (or an array, for an index).
    pub fn place(&self, doc: Value, value: Value) -> Result<Value, String> {
        let Some((last, parents)) = self.segments.split_last() else {
            return Ok(value);
        };
        let mut doc = doc;
        let mut current = &mut doc;
        for segment in parents {
            current = child_mut(current, segment, &self.text)?;
        }
        match (last, current) {
            (Segment::Field(name), Value::Object(map)) => {
                map.insert(name.clone(), value);
            }
            (Segment::Index(index), Value::Array(items)) if *index < items.len() => {
                items[*index] = value;
            }
            _ => return Err(self.mismatch()),
        }
        Ok(doc)
    }

    fn mismatch(&self) -> String {
        format!(
            "ResultPath {:?} does not fit the state input: a step of it is not an object",
            self.text
        )
    }
}

fn parse_bracket(text: &str, inner: &str) -> Result<Segment, String> {
    let quoted = inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
    if let Some(name) = quoted {
        return Ok(Segment::Field(name.to_string()));
    }
    inner
        .trim()
        .parse::<usize>()
        .map(Segment::Index)
        .map_err(|_| {
            format!("path {text:?}: [{inner}] is neither an index nor a quoted field name")
        })
}

fn child_mut<'a>(
    current: &'a mut Value,
    segment: &Segment,
    text: &str,
) -> Result<&'a mut Value, String> {
    let mismatch = || {
        format!("ResultPath {text:?} does not fit the state input: a step of it is not an object")
    };
    match segment {
        Segment::Field(name) => {
            let map = current.as_object_mut().ok_or_else(mismatch)?;
            let child = map
                .entry(name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if child.is_null() {
                *child = Value::Object(Map::new());
            }
            Ok(child)
        }
        Segment::Index(index) => current
            .as_array_mut()
            .and_then(|items| items.get_mut(*index))
            .ok_or_else(mismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn select(path: &str, doc: &Value) -> Option<Value> {
        JsonPath::parse(path).ok()?.select(doc).cloned()
    }

    #[test]
    fn selects_fields_indexes_and_quoted_names() {
        let doc = json!({"a": {"b": [10, {"c d": "x"}]}, "flag": true});
        assert_eq!(select("$", &doc), Some(doc.clone()));
        assert_eq!(select("$.flag", &doc), Some(json!(true)));
        assert_eq!(select("$.a.b[0]", &doc), Some(json!(10)));
        assert_eq!(select("$.a.b[1]['c d']", &doc), Some(json!("x")));
        assert_eq!(select("$['a'].b[1]", &doc), Some(json!({"c d": "x"})));
        assert_eq!(select("$.a.missing", &doc), None);
        assert_eq!(select("$.a.b[5]", &doc), None);
    }

    #[test]
    fn rejects_malformed_paths_with_a_reason() {
        for bad in ["a.b", "$.", "$.a[", "$.a[x]", "$.*", "$a"] {
            let err = JsonPath::parse(bad).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn places_values_creating_intermediate_objects() {
        let path = JsonPath::parse("$.result.deep.x").expect("path");
        let placed = path.place(json!({"keep": 1}), json!(7)).expect("place");
        assert_eq!(placed, json!({"keep": 1, "result": {"deep": {"x": 7}}}));

        let root = JsonPath::parse("$").expect("path");
        assert_eq!(
            root.place(json!({"a": 1}), json!(2)).expect("place"),
            json!(2)
        );

        let replace = JsonPath::parse("$.a").expect("path");
        assert_eq!(
            replace
                .place(json!({"a": 1}), json!({"b": 2}))
                .expect("place"),
            json!({"a": {"b": 2}})
        );
    }

    #[test]
    fn placing_through_a_non_object_fails() {
        let path = JsonPath::parse("$.a.b").expect("path");
        let err = path.place(json!({"a": 5}), json!(1)).expect_err("mismatch");
        assert!(err.contains("ResultPath"), "{err}");
    }
}
