//! The task line's admission rule, shared by every [`ConcurrencyGate`](crate::ports::ConcurrencyGate)
//! adapter so the embedded mode and AWS admit tasks the same way: first come first served,
//! within a deployment-wide limit and a limit per `concurrency_key`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ports::Admission;

/// One task in line, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineEntry {
    /// The task.
    pub task_id: String,
    /// Its `concurrency_key`, if any.
    pub key: Option<String>,
    /// Admitted (its worker may run), as opposed to waiting.
    pub running: bool,
}

/// The limits a line enforces.
#[derive(Clone, Copy, Debug)]
pub struct LineLimits {
    /// Most tasks running at once, deployment-wide; None: no limit.
    pub max_running: Option<usize>,
    /// Most tasks running at once per `concurrency_key` (at least 1).
    pub per_key: usize,
}

/// Whether a task with `key` is admitted whatever the line holds: without a deployment-wide
/// limit nothing holds back a task without a key ([`decide`] always admits it), so an
/// adapter need not read the line for it.
pub fn admitted_whatever_the_line(limits: LineLimits, key: Option<&str>) -> bool {
    limits.max_running.is_none() && key.is_none()
}

/// Whether `task_id`, waiting in `line` (oldest first), may run now: its turn has come when no
/// earlier waiting task would take the room it needs.
pub fn decide(line: &[LineEntry], task_id: &str, limits: LineLimits) -> Admission {
    let per_key_limit = limits.per_key.max(1);
    let running = |key: Option<&str>| {
        line.iter()
            .filter(|entry| entry.running && (key.is_none() || entry.key.as_deref() == key))
            .count()
    };
    let mut total = running(None);
    let mut per_key: HashMap<Option<&str>, usize> = HashMap::new();
    let mut ahead = 0;
    for entry in line.iter().filter(|entry| !entry.running) {
        let key = entry.key.as_deref();
        let key_running = *per_key
            .entry(key)
            .or_insert_with(|| key.map_or(0, |k| running(Some(k))));
        let room = limits.max_running.is_none_or(|max| total < max)
            && (key.is_none() || key_running < per_key_limit);
        if entry.task_id == task_id {
            return if room {
                Admission::Admitted
            } else {
                Admission::Queued { ahead }
            };
        }
        if room {
            // An earlier task would be admitted first: it takes the room it needs.
            total += 1;
            if key.is_some() {
                *per_key.entry(key).or_default() += 1;
            }
        }
        ahead += 1;
    }
    Admission::Queued { ahead }
}
