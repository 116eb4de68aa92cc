// celeriac dashboard: polls /api/overview and draws every panel with DOM calls (textContent
// only, never markup from data), the throughput chart as SVG. No libraries, no network but
// this server's.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let serverNow = Date.now() / 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function ago(timestamp) {
  if (!timestamp) return "never";
  const seconds = Math.max(0, serverNow - timestamp);
  if (seconds < 60) return `${seconds.toFixed(0)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return new Date(timestamp * 1000).toLocaleString();
}

function shortId(id) {
  return id && id.length > 13 ? `${id.slice(0, 8)}…` : id || "";
}

function text(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function badge(label, kind) {
  return el("span", { class: `badge ${kind || label}`, text: label });
}

// Shows a section's error (or hides it); returns true when the section has data to draw.
function sectionOk(section, data) {
  const error = section.querySelector(".error");
  if (data && data.error) {
    error.textContent = `Could not read this panel: ${data.error}`;
    error.hidden = false;
    return false;
  }
  error.hidden = true;
  return Boolean(data);
}

function fillRows(section, rows, emptyText) {
  const body = section.querySelector("tbody");
  body.replaceChildren(...rows);
  const empty = section.querySelector(".empty");
  if (empty) {
    if (emptyText !== undefined) empty.textContent = emptyText;
    empty.hidden = rows.length > 0;
  }
}

function taskLink(id) {
  return el("a", { href: `#task-${id}`, class: "mono", title: id, text: shortId(id),
                   onclick: (event) => { event.preventDefault(); lookUp(id); } });
}

// ---- panels ------------------------------------------------------------------------------------
function drawAbout(about) {
  document.getElementById("app-name").textContent = about.main || "(unnamed app)";
  document.getElementById("broker-url").textContent = about.broker;
  document.getElementById("backend-url").textContent = about.result_backend || "(none)";
  const events = about.events;
  let status;
  if (events.error) status = events.error;
  else if (events.task_events_seen) status = `receiving (${events.seen} so far)`;
  else if (events.seen) status = "receiving worker events; no task events yet";
  else status = "listening; none received yet";
  document.getElementById("events-status").textContent = status;
}

function drawWorkers(data) {
  const section = document.getElementById("workers");
  if (!sectionOk(section, data)) return;
  const rows = data.workers.map((w) => el("tr", { "data-node": w.hostname },
    el("td", { class: "mono", text: w.hostname }),
    el("td", {}, badge(w.alive ? "alive" : "offline")),
    el("td", { class: "num", text: w.active ?? "" }),
    el("td", { class: "num", text: w.processed ?? "" }),
    el("td", { class: "mono", text: Array.isArray(w.loadavg)
      ? w.loadavg.map((n) => Number(n).toFixed(2)).join(" ") : "" }),
    el("td", { class: "mono", text: (w.queues || []).join(", ") }),
    el("td", { text: ago(w.last_heartbeat) })));
  fillRows(section, rows, data.heartbeats_listed ? undefined
    : "No worker seen yet; this result store's heartbeat records cannot be listed, so "
      + "workers show once they send events (-E).");
}

function drawQueues(data) {
  const section = document.getElementById("queues");
  if (!sectionOk(section, data)) return;
  const deepest = Math.max(1, ...data.queues.map((q) => q.depth || 0));
  const rows = data.queues.map((q) => el("tr", { "data-queue": q.name },
    el("td", { class: "mono", text: q.name }),
    q.error ? el("td", { class: "error", text: q.error })
      : el("td", { class: "num depth", text: q.depth }),
    el("td", {}, el("div", { class: "bar" },
      el("div", { style: { width: `${(100 * (q.depth || 0)) / deepest}%` } })))));
  fillRows(section, rows);
}

const SERIES = ["succeeded", "failed", "retried", "revoked"];

function drawThroughput(data) {
  const section = document.getElementById("throughput");
  if (!sectionOk(section, data)) return;
  const rows = data.per_minute;
  const width = 600, height = 170, left = 34, bottom = 18, top = 8;
  const most = Math.max(1, ...rows.map((r) => SERIES.reduce((sum, s) => sum + r[s], 0)));
  const step = (width - left) / rows.length;
  const scale = (height - bottom - top) / most;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
                             "data-max": most });
  chart.append(svg("line", { class: "axis", x1: left, x2: width, y1: height - bottom,
                             y2: height - bottom }));
  for (const [value, y] of [[most, top], [0, height - bottom]]) {
    const label = svg("text", { x: left - 4, y: y + 4, "text-anchor": "end" });
    label.textContent = value;
    chart.append(label);
  }
  rows.forEach((row, i) => {
    let y = height - bottom;
    for (const series of SERIES) {
      const count = row[series];
      if (!count) continue;
      const h = count * scale;
      y -= h;
      const bar = svg("rect", { class: series, x: left + i * step + 1, y, width: step - 2,
                                height: h, "data-count": count });
      const tip = svg("title", {});
      tip.textContent = `${new Date(row.minute * 1000).toLocaleTimeString()}: ${count} ${series}`;
      bar.append(tip);
      chart.append(bar);
    }
  });
  for (const [i, label, anchor] of [[0, `-${rows.length} min`, "start"],
                                    [rows.length / 2, `-${rows.length / 2} min`, "middle"],
                                    [rows.length, "now", "end"]]) {
    const tick = svg("text", { x: left + i * step, y: height - 4, "text-anchor": anchor });
    tick.textContent = label;
    chart.append(tick);
  }
  section.querySelector(".chart").replaceChildren(chart);
  for (const series of SERIES) {
    section.querySelector(`[data-total="${series}"]`).textContent =
      rows.reduce((sum, r) => sum + r[series], 0);
  }
}

// tracebacks the user opened stay open across refreshes (the rows are drawn anew each time)
const openTracebacks = new Set();

// A result, or an exception whose traceback opens below it (and stays open across refreshes).
function outcomeCell(t, panel) {
  if (!t.traceback && !t.exception) return el("span", { class: "mono", text: text(t.result) });
  const key = `${panel}:${t.uuid}`;
  const remember = (e) => (e.target.open ? openTracebacks.add(key) : openTracebacks.delete(key));
  return el("details", { open: openTracebacks.has(key) ? "" : null, ontoggle: remember },
    el("summary", { text: t.exception || "exception" }),
    el("pre", { class: "traceback", text: t.traceback || "(no traceback sent)" }));
}

function drawTasks(data, about) {
  const flight = document.getElementById("in-flight");
  const recent = document.getElementById("recent");
  const failed = document.getElementById("failures");
  if ([flight, recent, failed].map((s) => sectionOk(s, data)).includes(false)) return;
  fillRows(flight, data.in_flight.map((t) => el("tr", { "data-task": t.uuid },
    el("td", {}, taskLink(t.uuid)), el("td", { class: "mono", text: t.name || "" }),
    el("td", {}, badge(t.state)), el("td", { class: "mono", text: t.worker || "" }),
    el("td", { text: ago(t.started || t.received) }),
    el("td", { class: "mono", text: `${t.args || ""} ${t.kwargs || ""}`.trim() }))));
  recent.querySelector("tbody").replaceChildren(...data.recent.map((t) => el("tr",
    { "data-task": t.uuid, "data-state": t.state },
    el("td", {}, taskLink(t.uuid)), el("td", { class: "mono", text: t.name || "" }),
    el("td", {}, badge(t.state)), el("td", { class: "mono", text: t.worker || "" }),
    el("td", { class: "num", text: t.runtime != null ? `${Number(t.runtime).toFixed(3)}s` : "" }),
    el("td", {}, outcomeCell(t, "recent")))));
  fillRows(failed, data.failures.map((t) => el("tr", { "data-task": t.uuid },
    el("td", {}, taskLink(t.uuid)), el("td", { class: "mono", text: t.name || "" }),
    el("td", {}, badge(t.state)), el("td", { class: "mono", text: t.worker || "" }),
    el("td", { text: ago(t.failed || t.updated) }), el("td", {}, outcomeCell(t, "failures")))));
  const hint = recent.querySelector(".hint");
  hint.hidden = data.recent.length > 0;
  hint.textContent = about.events.task_events_seen
    ? "No task has finished since the dashboard started."
    : "No task events yet: tasks in flight, outcomes and throughput come from task events. "
      + "Start workers with -E (or set worker_send_task_events = True).";
}

async function replay(body, button) {
  const notice = document.querySelector("#dead-letters .notice");
  if (button) button.disabled = true;
  try {
    const answer = await fetch("/api/dead-letters/replay", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const data = await answer.json();
    notice.textContent = answer.ok ? `Replayed ${data.replayed} message(s).`
      : `Replay failed: ${data.error}`;
  } catch (err) {
    notice.textContent = `Replay failed: ${err}`;
  }
  notice.hidden = false;
  refresh();
}

function drawDeadLetters(data) {
  const section = document.getElementById("dead-letters");
  if (!sectionOk(section, data)) return;
  const rows = data.dead_letters.map((d) => el("tr", { "data-dead-letter": d.id },
    el("td", { class: "mono", title: d.id, text: shortId(d.id) }),
    el("td", {}, el("span", { class: "mono", text: text(d.task) }), " ",
      d.task_id ? taskLink(text(d.task_id)) : null),
    el("td", { class: "mono", text: d.queue }),
    el("td", { text: d.reason }),
    el("td", { text: ago(d.created_at) }),
    el("td", {}, el("button", { type: "button", class: "replay", text: "Replay",
                                onclick: (e) => replay({ ids: [d.id] }, e.target) }))));
  fillRows(section, rows, data.kept ? "No dead letters."
    : "This broker keeps no dead letters.");
  document.getElementById("replay-all").hidden = rows.length < 2;
}

function progressCell(progress) {
  if (!progress) return el("td", {});
  const percent = Number(progress.progress_percent || 0);
  const left = Number(progress.time_remaining);
  return el("td", {},
    el("div", { class: "bar", title: `${percent.toFixed(1)}%` },
      el("div", { style: { width: `${Math.min(100, percent)}%` } })),
    el("span", { class: "mono", text: `${progress.completed_count}/${progress.total_count} `
      + `${percent.toFixed(0)}%` + (left >= 0 ? `, ${left.toFixed(0)}s left` : "") }));
}

function drawDispatches(data) {
  const section = document.getElementById("dispatches");
  if (!sectionOk(section, data)) return;
  const rows = data.dispatches.map((d) => el("tr", { "data-task": d.uuid },
    el("td", {}, taskLink(d.uuid), " ", el("span", { class: "mono", text: d.name || "" })),
    el("td", {}, badge(d.state)), progressCell(d.progress)));
  fillRows(section, rows, data.tasks.length
    ? `No run of ${data.tasks.join(", ")} seen yet (they show from task events).`
    : "No @dispatch tasks in this app.");
}

function drawBatches(data) {
  const section = document.getElementById("batches");
  if (!sectionOk(section, data)) return;
  fillRows(section, data.batches.map((b) => el("tr", { "data-batch": b.name },
    el("td", { class: "mono", text: b.name }),
    el("td", { text: `every ${b.flush_every} or ${b.flush_interval}s` }),
    el("td", { class: "num", text: b.buffered }), el("td", { class: "num", text: b.running }),
    el("td", { class: "num", text: b.succeeded }), el("td", { class: "num", text: b.failed }))));
}

// ---- one task ----------------------------------------------------------------------------------
async function lookUp(id) {
  id = id.trim();
  const out = document.getElementById("lookup-result");
  document.getElementById("lookup-id").value = id;
  if (!id) return;
  out.replaceChildren(el("p", { class: "empty", text: "loading…" }));
  try {
    const answer = await fetch(`/api/task/${encodeURIComponent(id)}`);
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.error);
    const seen = data.events || {};
    const stored = data.stored || {};
    const facts = [["id", data.id], ["name", seen.name], ["state (events)", seen.state],
      ["state (result store)", stored.state], ["worker", seen.worker],
      ["args", seen.args], ["kwargs", seen.kwargs], ["runtime", seen.runtime],
      ["result", stored.result ?? seen.result], ["exception", stored.exception ?? seen.exception],
      ["progress", stored.progress], ["done at", stored.date_done]];
    const list = el("dl", {});
    for (const [name, value] of facts) {
      if (value === undefined || value === null || value === "") continue;
      list.append(el("dt", { text: name }), el("dd", { text: text(value) }));
    }
    const traceback = stored.traceback || seen.traceback;
    out.replaceChildren(list, traceback ? el("pre", { class: "traceback", text: traceback })
      : null);
    out.scrollIntoView({ block: "nearest" });
  } catch (err) {
    out.replaceChildren(el("p", { class: "error", text: `Could not look it up: ${err.message}` }));
  }
}

// ---- the loop ----------------------------------------------------------------------------------
let refreshing = false;

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  const banner = document.getElementById("banner");
  try {
    const answer = await fetch("/api/overview");
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.error || answer.statusText);
    serverNow = data.app.now;
    drawAbout(data.app);
    drawWorkers(data.workers);
    drawQueues(data.queues);
    drawThroughput(data.throughput);
    drawTasks(data.tasks, data.app);
    drawDeadLetters(data.dead_letters);
    drawDispatches(data.dispatches);
    drawBatches(data.batches);
    banner.hidden = true;
    document.getElementById("refreshed").textContent =
      `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    banner.textContent = `The dashboard server did not answer: ${err.message}`;
    banner.hidden = false;
  } finally {
    refreshing = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    lookUp(document.getElementById("lookup-id").value);
  });
  document.getElementById("replay-all").addEventListener("click", (event) => {
    if (confirm("Replay every dead letter?")) replay({ all: true }, event.target);
  });
  if (location.hash.startsWith("#task-")) lookUp(location.hash.slice(6));
  refresh();
  setInterval(refresh, REFRESH_MS);
});
