// The dashboard's script: polls the dashboard's JSON routes and fills the page in.
// Task data is only ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("session ended");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || ("HTTP " + response.status));
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function badge(element, status) {
  element.textContent = status;
  element.className = "badge status-" + status;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function seconds(value) {
  if (value == null) return "";
  return value < 60 ? value.toFixed(1) + " s" : Math.floor(value / 60) + " min " + Math.round(value % 60) + " s";
}

// ---- task list ----
function taskList(page) {
  const params = new URLSearchParams(window.location.search);
  let status = params.get("status") || "all";
  // A page past the first (from "Older tasks") keeps its cursor; a filter click starts over.
  let cursor = params.get("cursor") || "";
  const older = page.querySelector("#older");
  const tbody = page.querySelector("#tasks tbody");
  const note = page.querySelector("#list-note");
  const buttons = page.querySelectorAll("button.filter");
  const mark = () => buttons.forEach((b) => b.classList.toggle("active", b.dataset.status === status));
  buttons.forEach((button) =>
    button.addEventListener("click", () => {
      status = button.dataset.status;
      const url = new URL(window.location.href);
      url.searchParams.set("status", status);
      url.searchParams.delete("cursor");
      cursor = "";
      window.history.replaceState(null, "", url);
      mark();
      refresh();
    })
  );
  mark();
  async function refresh() {
    try {
      const body = await getJson("/ui/api/tasks?status=" + encodeURIComponent(status) + "&cursor=" + encodeURIComponent(cursor));
      const rows = body.tasks.map((task) => {
        const row = document.createElement("tr");
        row.dataset.taskId = task.task_id;
        const link = document.createElement("a");
        link.href = "/ui/tasks/" + encodeURIComponent(task.task_id);
        link.textContent = task.task_id;
        cell(row, "").appendChild(link);
        badge(cell(row, "").appendChild(document.createElement("span")), task.status);
        cell(row, task.task_name);
        cell(row, task.worker_size);
        cell(row, when(task.submitted_at));
        cell(row, seconds(task.duration_seconds));
        return row;
      });
      tbody.replaceChildren(...rows);
      older.hidden = !body.next_cursor;
      if (body.next_cursor) {
        older.href = "/ui/?status=" + encodeURIComponent(status) + "&cursor=" + encodeURIComponent(body.next_cursor);
      }
      note.textContent = rows.length + " task" + (rows.length === 1 ? "" : "s") + ", refreshed " + new Date().toLocaleTimeString(undefined, { hour12: false });
    } catch (err) {
      note.textContent = "Could not refresh: " + err.message;
    }
  }
  refresh();
  setInterval(refresh, POLL_MS);
}

// ---- task page ----
function taskPage(page) {
  const id = page.dataset.taskId;
  const base = "/ui/api/tasks/" + encodeURIComponent(id);
  const log = page.querySelector("#log");
  const cancel = page.querySelector("#cancel");
  const actionNote = page.querySelector("#action-note");
  let done = false;
  let ended = false;
  let logTimer = null;

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    actionNote.textContent = "Cancelling…";
    try {
      const response = await fetch(base + "/cancel", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf() },
      });
      const body = await response.json();
      actionNote.textContent = response.ok ? "Cancel requested." : body.message;
    } catch (err) {
      actionNote.textContent = "Cancel failed: " + err.message;
    }
    cancel.disabled = false;
    refresh();
  });

  // What the page has learned from the history so far; each refresh asks only for the
  // events past `seen` and folds them in.
  const EVENTS_SHOWN = 200;
  let seen = 0;
  let previous = null;
  let callbackStart = null;
  const visited = new Set();
  const taken = new Set();
  const attempts = [];
  const eventRows = page.querySelector("#events tbody");

  function highlight(view) {
    const edges = new Set(taken);
    if (view.ended && previous && previous !== view.start) edges.add(previous + ">" + view.end);
    page.querySelectorAll("#graph [data-state]").forEach((node) => {
      const name = node.dataset.state;
      const reached = visited.has(name) || (name === view.start && visited.size > 0) ||
        (name === view.end && [...edges].some((edge) => edge.endsWith(">" + view.end)));
      node.classList.toggle("visited", reached);
      node.classList.toggle("current", name === view.current);
    });
    page.querySelectorAll("#graph [data-edge]").forEach((edge) => {
      edge.classList.toggle("taken", edges.has(edge.dataset.edge));
    });
  }

  function facts(status) {
    const parts = [status.task_name, status.worker_size, "submitted " + when(status.submitted_at)];
    if (status.started_at) parts.push("started " + when(status.started_at));
    if (status.finished_at) parts.push("finished " + when(status.finished_at));
    if (status.exit_code != null) parts.push("exit code " + status.exit_code);
    if (status.reason) parts.push(status.reason);
    if (status.state) parts.push("state " + status.state);
    page.querySelector("#task-facts").textContent = parts.join(" · ");
  }

  // Folds new events into the path taken, the callback attempts and the event table.
  function absorb(view) {
    if (previous === null) previous = view.start;
    for (const event of view.events) {
      if (event.state && event.event_type.endsWith("StateEntered")) {
        taken.add(previous + ">" + event.state);
        visited.add(event.state);
        previous = event.state;
      }
      if (event.state === view.callback_state && event.event_type === "TaskStarted") callbackStart = event.timestamp;
      if (event.callback) {
        attempts.push(Object.assign({ at: callbackStart || event.timestamp }, event.callback));
        callbackStart = null;
      }
      const row = document.createElement("tr");
      cell(row, when(event.timestamp));
      cell(row, event.event_type, /Failed|TimedOut|Aborted/.test(event.event_type) ? "bad" : "");
      cell(row, event.state);
      cell(row, event.detail);
      eventRows.insertBefore(row, eventRows.firstChild);
    }
    while (eventRows.children.length > EVENTS_SHOWN) eventRows.lastChild.remove();
    seen = view.events_total;
    page.querySelector("#events-note").textContent =
      seen > eventRows.children.length
        ? "(newest " + eventRows.children.length + " of " + seen + ", newest first)"
        : "(" + seen + ", newest first)";
  }

  function callbacks(view) {
    const rows = attempts.map((attempt) => {
      const row = document.createElement("tr");
      cell(row, when(attempt.at));
      cell(row, attempt.delivered ? "delivered" : "failed", attempt.delivered ? "good" : "bad");
      cell(row, attempt.status_code != null ? "HTTP " + attempt.status_code + (attempt.error ? " · " + attempt.error : "") : attempt.error || "");
      cell(row, attempt.webhook_id);
      return row;
    });
    page.querySelector("#callbacks tbody").replaceChildren(...rows);
    const callback = view.status.callback;
    page.querySelector("#callbacks-note").textContent = !callback
      ? "This task has no callback URL."
      : rows.length === 0
        ? "No attempt yet: the callback is sent when the task ends."
        : "";
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const view = await getJson(base + "?after=" + seen);
      badge(page.querySelector("#task-status"), view.status.status);
      facts(view.status);
      absorb(view);
      highlight(view);
      callbacks(view);
      cancel.hidden = view.status.done;
      ended = view.ended;
      if (view.status.done && !done) {
        done = true;
        refreshLog();
      }
    } catch (err) {
      actionNote.textContent = "Could not refresh: " + err.message;
    }
    refreshing = false;
  }

  async function refreshLog() {
    try {
      const body = await getJson(base + "/logs");
      const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      if (log.textContent !== body.logs) {
        log.textContent = body.logs;
        if (follow) log.scrollTop = log.scrollHeight;
      }
      page.querySelector("#log-note").textContent =
        (body.logs_truncated ? "(last part) " : "") + (done ? "(task ended)" : "(following)");
    } catch (err) {
      page.querySelector("#log-note").textContent = "(" + err.message + ")";
    }
    if (done && logTimer) {
      clearInterval(logTimer);
      logTimer = null;
    }
  }

  refresh();
  refreshLog();
  // Until the execution itself has ended: the callback attempts come after the task's end.
  setInterval(() => { if (!ended) refresh(); }, POLL_MS);
  logTimer = setInterval(refreshLog, POLL_MS);
}

const listPage = document.getElementById("task-list-page");
if (listPage) taskList(listPage);
const detailPage = document.getElementById("task-page");
if (detailPage) taskPage(detailPage);
