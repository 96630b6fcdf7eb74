//! Task chaining: a running task starts child tasks with its task token.
//!
//! A child's id is its parent's id, a `.`, and the child's own `task_id` (see
//! [`TaskId::child`]), so the orchestrator's name index alone finds a task's children and
//! descendants (the name prefix `PARENT.`), in both modes, with nothing stored besides the
//! execution itself. This module reads that tree; the rules for submitting a child live in
//! [`crate::service::TaskService::submit_child`].

use std::sync::{Arc, OnceLock, Weak};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ports::{ExecutionStatus, ExecutionView, Orchestrator, PageQuery, PortError};
use crate::status::task_status;
use crate::task::TaskId;

/// Executions read per orchestrator page while walking a task's descendants.
const PAGE: usize = 200;

/// A child task as its parent's status and callback show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChildRef {
    /// The child's task id (`PARENT.CHILD`).
    pub task_id: String,
    /// Its status word, as `GET /task-runner/{task_id}` shows it.
    pub status: String,
}

/// Every execution whose task descends from `parent`, newest first; only running ones when
/// `running_only`. Descendants start after their ancestor, so only executions started since
/// the parent did are read: Step Functions lists executions newest first and cannot filter
/// them by name, so this bounds the walk in the AWS mode.
async fn descendants(
    orchestrator: &dyn Orchestrator,
    parent: &ExecutionView,
    running_only: bool,
) -> Result<Vec<ExecutionView>, PortError> {
    let Ok(parent_id) = TaskId::parse(&parent.name) else {
        return Ok(Vec::new());
    };
    descendants_since(orchestrator, &parent_id, parent.started_at, running_only).await
}

/// [`descendants`] of the task `parent`, reading only executions started since `since`.
async fn descendants_since(
    orchestrator: &dyn Orchestrator,
    parent: &TaskId,
    since: DateTime<Utc>,
    running_only: bool,
) -> Result<Vec<ExecutionView>, PortError> {
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let page = orchestrator
            .page(&PageQuery {
                status: running_only.then_some(ExecutionStatus::Running),
                since: Some(since),
                prefix: Some(parent.descendant_prefix()),
                limit: PAGE,
                token,
            })
            .await?;
        found.extend(
            page.executions
                .into_iter()
                .filter(|execution| parent.is_ancestor_of(&execution.name)),
        );
        token = page.next_token;
        if token.is_none() {
            return Ok(found);
        }
    }
}

/// The direct children of the task `parent` (its execution), in the order they were submitted.
pub async fn children(
    orchestrator: &dyn Orchestrator,
    parent: &ExecutionView,
) -> Result<Vec<ChildRef>, PortError> {
    match TaskId::parse(&parent.name) {
        Ok(id) => children_since(orchestrator, &id, parent.started_at).await,
        Err(_) => Ok(Vec::new()),
    }
}

/// [`children`] of the task `parent`, which started before `since` (its children after).
async fn children_since(
    orchestrator: &dyn Orchestrator,
    parent: &TaskId,
    since: DateTime<Utc>,
) -> Result<Vec<ChildRef>, PortError> {
    let depth = parent.depth() + 1;
    let mut children: Vec<ChildRef> = descendants_since(orchestrator, parent, since, false)
        .await?
        .iter()
        .filter(|execution| execution.name.matches('.').count() == depth)
        .map(|execution| ChildRef {
            task_id: execution.name.clone(),
            status: task_status(execution).status,
        })
        .collect();
    children.reverse();
    Ok(children)
}

/// The running descendants of the task `parent` (its execution), deepest first, so a
/// cascade stops grandchildren before the children that wait for them.
pub async fn running_descendants(
    orchestrator: &dyn Orchestrator,
    parent: &ExecutionView,
) -> Result<Vec<String>, PortError> {
    let mut ids: Vec<String> = descendants(orchestrator, parent, true)
        .await?
        .into_iter()
        .map(|execution| execution.name)
        .collect();
    ids.sort_by_key(|id| std::cmp::Reverse(id.matches('.').count()));
    Ok(ids)
}

/// Builds the orchestrator of the state machine with the given ARN.
type OrchestratorFor = dyn Fn(&str) -> Arc<dyn Orchestrator> + Send + Sync;

/// Where the finish step finds a task's children for its callback: the orchestrator,
/// attached once it exists (the embedded engine is built after the steps it runs), or, in
/// the AWS mode, the state machine the finish step is told it runs in (its context object:
/// the template cannot give the function the machine's ARN without a cycle).
#[derive(Clone, Default)]
pub struct ChildIndex {
    attached: Arc<OnceLock<Weak<dyn Orchestrator>>>,
    by_arn: Option<Arc<OrchestratorFor>>,
}

impl ChildIndex {
    /// Reads children through the orchestrator `build` makes for the state machine ARN the
    /// finish step is given.
    pub fn by_state_machine(
        build: impl Fn(&str) -> Arc<dyn Orchestrator> + Send + Sync + 'static,
    ) -> Self {
        Self {
            attached: Arc::default(),
            by_arn: Some(Arc::new(build)),
        }
    }

    /// Reads children from `orchestrator` from now on.
    pub fn attach(&self, orchestrator: &Arc<dyn Orchestrator>) {
        let _ = self.attached.set(Arc::downgrade(orchestrator));
    }

    /// The children of `parent`, whose execution runs in the state machine
    /// `state_machine_arn` (when known); none when no orchestrator can be reached. With
    /// `submitted_at`, when the parent's worker was started (its children were submitted
    /// after it), the parent's execution is not read.
    pub async fn children(
        &self,
        parent: &TaskId,
        state_machine_arn: Option<&str>,
        submitted_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<ChildRef>, PortError> {
        let orchestrator = match (self.attached.get().and_then(Weak::upgrade), &self.by_arn) {
            (Some(orchestrator), _) => orchestrator,
            (None, Some(build)) => match state_machine_arn {
                Some(arn) => build(arn),
                None => return Ok(Vec::new()),
            },
            (None, None) => return Ok(Vec::new()),
        };
        if let Some(submitted_at) = submitted_at {
            // A margin for clocks that differ (the orchestrator's and the steps').
            let since = submitted_at - chrono::Duration::minutes(1);
            return children_since(orchestrator.as_ref(), parent, since).await;
        }
        match orchestrator.describe(parent.as_str()).await? {
            Some(execution) => children(orchestrator.as_ref(), &execution).await,
            None => Ok(Vec::new()),
        }
    }
}
