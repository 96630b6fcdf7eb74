//! The state machine drawn from its ASL definition, as SVG: one box per state, one arrow per
//! transition (`Next`, each `Choice` rule and `Default`, each `Catch`), laid out top to
//! bottom in layers as the Step Functions console draws it.
//!
//! Every box carries `data-state="NAME"` and every arrow `data-edge="FROM>TO"`, so the page
//! marks the current state and the path taken by setting classes; the drawing itself does
//! not change while a task runs.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::page::escape;

/// Pseudo-states for the start and end circles.
pub const START: &str = "(start)";
/// See [`START`].
pub const END: &str = "(end)";

const BOX_W: i32 = 190;
const BOX_H: i32 = 40;
const LAYER_H: i32 = 86;
const COLUMN_W: i32 = 240;
const MARGIN: i32 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EdgeKind {
    Next,
    Choice,
    Default,
    Catch,
}

#[derive(Debug)]
struct Edge {
    from: String,
    to: String,
    kind: EdgeKind,
    label: String,
}

/// A laid-out state machine.
#[derive(Debug)]
pub struct Graph {
    /// States in discovery order, with their kind (`Task`, `Choice`, ...).
    nodes: Vec<(String, String)>,
    edges: Vec<Edge>,
    position: HashMap<String, (i32, i32)>,
    width: i32,
    height: i32,
}

impl Graph {
    /// Lays out the definition; `Err` says what in it cannot be drawn.
    pub fn from_asl(definition: &str) -> Result<Self, String> {
        let asl: Value = serde_json::from_str(definition)
            .map_err(|err| format!("state machine definition is not JSON: {err}"))?;
        let states = asl
            .get("States")
            .and_then(Value::as_object)
            .ok_or("state machine definition has no States object")?;
        let start = asl
            .get("StartAt")
            .and_then(Value::as_str)
            .ok_or("state machine definition has no StartAt")?;

        let mut edges = vec![Edge {
            from: START.into(),
            to: start.into(),
            kind: EdgeKind::Next,
            label: String::new(),
        }];
        let mut nodes = vec![(START.to_owned(), "Start".to_owned())];
        for (name, state) in states {
            let kind = state.get("Type").and_then(Value::as_str).unwrap_or("Task");
            nodes.push((name.clone(), kind.to_owned()));
            let mut add = |to: &str, kind: EdgeKind, label: String| {
                edges.push(Edge {
                    from: name.clone(),
                    to: to.to_owned(),
                    kind,
                    label,
                })
            };
            for rule in state
                .get("Choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(next) = rule.get("Next").and_then(Value::as_str) {
                    add(next, EdgeKind::Choice, choice_label(rule));
                }
            }
            if let Some(next) = state.get("Default").and_then(Value::as_str) {
                add(next, EdgeKind::Default, "Default".into());
            }
            if let Some(next) = state.get("Next").and_then(Value::as_str) {
                add(next, EdgeKind::Next, String::new());
            }
            for catcher in state
                .get("Catch")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(next) = catcher.get("Next").and_then(Value::as_str) {
                    add(next, EdgeKind::Catch, "Catch".into());
                }
            }
            let terminal = matches!(kind, "Succeed" | "Fail")
                || state.get("End").and_then(Value::as_bool) == Some(true);
            if terminal {
                add(END, EdgeKind::Next, String::new());
            }
        }
        nodes.push((END.to_owned(), "End".to_owned()));
        if let Some(edge) = edges
            .iter()
            .find(|e| !nodes.iter().any(|(name, _)| *name == e.to))
        {
            return Err(format!(
                "state {:?} goes to {:?}, which is not a state",
                edge.from, edge.to
            ));
        }

        // Discovery order from the start, and back edges (to a state still being visited).
        let mut order = Vec::new();
        let mut back = vec![false; edges.len()];
        let mut seen: HashMap<&str, bool> = HashMap::new(); // name -> still on the stack
        fn visit<'a>(
            name: &'a str,
            edges: &'a [Edge],
            seen: &mut HashMap<&'a str, bool>,
            back: &mut [bool],
            order: &mut Vec<&'a str>,
        ) {
            seen.insert(name, true);
            order.push(name);
            for (index, edge) in edges.iter().enumerate().filter(|(_, e)| e.from == name) {
                match seen.get(edge.to.as_str()) {
                    Some(true) => back[index] = true,
                    Some(false) => {}
                    None => visit(&edge.to, edges, seen, back, order),
                }
            }
            seen.insert(name, false);
        }
        visit(START, &edges, &mut seen, &mut back, &mut order);
        // States no transition reaches are drawn too, after the others.
        for (name, _) in &nodes {
            if !seen.contains_key(name.as_str()) {
                visit(name, &edges, &mut seen, &mut back, &mut order);
            }
        }

        // Layer: the longest forward path from the start; the end circle below everything.
        let mut layer: HashMap<&str, i32> = HashMap::new();
        for name in &order {
            layer.entry(name).or_insert(0);
        }
        for _ in 0..order.len() {
            for (index, edge) in edges.iter().enumerate() {
                if back[index] {
                    continue;
                }
                let wanted = layer[edge.from.as_str()] + 1;
                if layer[edge.to.as_str()] < wanted {
                    layer.insert(&edge.to, wanted);
                }
            }
        }
        let mut columns: HashMap<i32, Vec<&str>> = HashMap::new();
        for name in &order {
            columns.entry(layer[name]).or_default().push(name);
        }
        let widest = columns.values().map(Vec::len).max().unwrap_or(1) as i32;
        let layers = columns.keys().max().copied().unwrap_or(0) + 1;
        let width = widest * COLUMN_W + 2 * MARGIN + 120;
        let center = MARGIN + 60 + widest * COLUMN_W / 2;
        let mut position = HashMap::new();
        for (row, names) in &columns {
            let count = names.len() as i32;
            for (index, name) in names.iter().enumerate() {
                let x = center + (2 * index as i32 - (count - 1)) * COLUMN_W / 2;
                position.insert((*name).to_owned(), (x, MARGIN + row * LAYER_H));
            }
        }
        Ok(Graph {
            nodes,
            edges,
            position,
            width,
            height: MARGIN * 2 + (layers - 1) * LAYER_H + BOX_H,
        })
    }

    /// The SVG, with classes and data attributes for the page's script to highlight.
    pub fn svg(&self) -> String {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg class="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="state machine">"#,
            w = self.width,
            h = self.height
        );
        svg.push_str(
            r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>"#,
        );
        let mut side_offsets: HashMap<i32, i32> = HashMap::new();
        for edge in &self.edges {
            let (x1, y1) = self.position[&edge.from];
            let (x2, y2) = self.position[&edge.to];
            let (bottom1, top2) = (y1 + BOX_H, y2);
            let path = if y2 <= y1 {
                // Back edge: out of the left side, up, into the left side.
                let slot = side_offsets.entry(-1).or_insert(0);
                *slot += 1;
                let out = x1.min(x2) - BOX_W / 2 - 24 * *slot;
                let (ya, yb) = (y1 + BOX_H / 2, y2 + BOX_H / 2);
                format!(
                    "M{} {ya} C{out} {ya} {out} {yb} {} {yb}",
                    x1 - BOX_W / 2,
                    x2 - BOX_W / 2
                )
            } else if x1 == x2 && self.blocked(x1, y1, y2) {
                // Down past other boxes in the same column: around their right side.
                let slot = side_offsets.entry(1).or_insert(0);
                *slot += 1;
                let out = x1 + BOX_W / 2 + 28 * *slot;
                let (ya, yb) = (y1 + BOX_H / 2, y2 + BOX_H / 2);
                format!(
                    "M{} {ya} C{out} {ya} {out} {yb} {} {yb}",
                    x1 + BOX_W / 2,
                    x2 + BOX_W / 2
                )
            } else {
                let mid = (bottom1 + top2) / 2;
                format!("M{x1} {bottom1} C{x1} {mid} {x2} {mid} {x2} {top2}")
            };
            let class = match edge.kind {
                EdgeKind::Catch => "edge edge-catch",
                _ => "edge",
            };
            let _ = write!(
                svg,
                r#"<g class="{class}" data-edge="{}&gt;{}"><path d="{path}" marker-end="url(#arrow)"/>"#,
                escape(&edge.from),
                escape(&edge.to)
            );
            if !edge.label.is_empty() {
                let (lx, ly) = label_point(&path);
                // A back edge's label ends left of its curve (which bulges past the label
                // point), so neither the curve nor the boxes cover it.
                let (lx, class) = if lx < x1 - BOX_W / 2 {
                    (lx - 22, "edge-label left")
                } else {
                    (lx, "edge-label")
                };
                let _ = write!(
                    svg,
                    r#"<text x="{lx}" y="{ly}" class="{class}">{}</text>"#,
                    escape(&edge.label)
                );
            }
            svg.push_str("</g>");
        }
        for (name, kind) in &self.nodes {
            let (x, y) = self.position[name];
            let _ = write!(
                svg,
                r#"<g class="state state-{}" data-state="{}">"#,
                kind.to_ascii_lowercase(),
                escape(name)
            );
            if name == START || name == END {
                let _ = write!(
                    svg,
                    r#"<rect x="{}" y="{y}" width="80" height="{BOX_H}" rx="{}"/><text x="{x}" y="{}">{}</text></g>"#,
                    x - 40,
                    BOX_H / 2,
                    y + BOX_H / 2 + 5,
                    kind
                );
                continue;
            }
            let _ = write!(
                svg,
                r#"<rect x="{}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/><text x="{x}" y="{}">{}</text><title>{} ({})</title></g>"#,
                x - BOX_W / 2,
                y + BOX_H / 2 + 5,
                escape(name),
                escape(name),
                escape(kind)
            );
        }
        svg.push_str("</svg>");
        svg
    }

    /// Whether a box of column `x` lies strictly between rows `y1` and `y2`.
    fn blocked(&self, x: i32, y1: i32, y2: i32) -> bool {
        self.position
            .values()
            .any(|&(bx, by)| bx == x && by > y1 && by < y2)
    }
}

/// A short label for a Choice rule: `done = true` for `$.run.done` `BooleanEquals` true.
fn choice_label(rule: &Value) -> String {
    let variable = rule
        .get("Variable")
        .and_then(Value::as_str)
        .map(|v| v.rsplit('.').next().unwrap_or(v))
        .unwrap_or("rule");
    let comparison = rule.as_object().and_then(|rule| {
        rule.iter()
            .find(|(key, _)| !matches!(key.as_str(), "Variable" | "Next" | "Comment"))
    });
    match comparison {
        Some((_, value)) => format!("{variable} = {value}"),
        None => variable.to_owned(),
    }
}

/// Roughly the middle of a path `M x y C ... x y`: where its label goes.
fn label_point(path: &str) -> (i32, i32) {
    let numbers: Vec<i32> = path
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [x1, y1, cx1, _, cx2, _, x2, y2] => {
            (((cx1 + cx2) / 2 + (x1 + x2) / 2) / 2 + 6, (y1 + y2) / 2)
        }
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::STATE_MACHINE;

    #[test]
    fn every_state_and_transition_of_the_definition_is_drawn() {
        let svg = Graph::from_asl(STATE_MACHINE).unwrap().svg();
        for state in [
            "Submit",
            "WaitForWorker",
            "PollWorker",
            "IsTaskDone",
            "FinishAndCallback",
            "CallbackUndeliverable",
            "Done",
        ] {
            assert!(svg.contains(&format!(r#"data-state="{state}""#)), "{state}");
        }
        for edge in [
            "(start)&gt;Submit",
            "Submit&gt;WaitForWorker",
            "Submit&gt;FinishAndCallback",
            "IsTaskDone&gt;WaitForWorker",
            "IsTaskDone&gt;FinishAndCallback",
            "FinishAndCallback&gt;CallbackUndeliverable",
            "Done&gt;(end)",
        ] {
            assert!(svg.contains(&format!(r#"data-edge="{edge}""#)), "{edge}");
        }
        assert!(svg.contains("done = true"), "choice rule labelled");
    }

    #[test]
    fn a_transition_to_a_missing_state_is_named() {
        let err =
            Graph::from_asl(r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}}}"#)
                .unwrap_err();
        assert!(err.contains("\"B\""), "{err}");
    }
}
