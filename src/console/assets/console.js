// burrow console: polls the console's JSON API and draws the page. No framework, no CDN.
"use strict";

const TOKEN = document.querySelector('meta[name="burrow-token"]').content;
const POLL_MS = 2000;
const HISTORY = 90; // points kept per chart (3 minutes at 2 s)
const $ = (sel) => document.querySelector(sel);

const state = {
  history: [], // {t, publish, ack, latencyMs}
  lastLatency: null, // {sum, count} summed over workers at the previous poll
  letters: [],
  selected: new Set(),
  deadQueues: [],
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c === null || c === undefined ? "" : c);
  return e;
}

function showError(text) {
  const p = $("#error");
  p.textContent = text || "";
  p.hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = { error: text.trim() }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "content-type": "application/json", "x-burrow-token": TOKEN },
    body: JSON.stringify(body),
  });
}

const count = (v) => (v === null || v === undefined ? "-" : String(v));
const rate = (v) => (v === null || v === undefined ? "-" : v.toFixed(1));

function age(secs) {
  if (secs === null || secs === undefined) return "-";
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m${String(secs % 60).padStart(2, "0")}s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h${String(Math.floor((secs % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(secs / 86400)}d${String(Math.floor((secs % 86400) / 3600)).padStart(2, "0")}h`;
}

// ---- tabs ----------------------------------------------------------------------------------

function currentTab() {
  const tab = location.hash.replace(/^#/, "").split("/")[0];
  return ["overview", "dead-letters", "topology"].includes(tab) ? tab : "overview";
}

function showTab() {
  const tab = currentTab();
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== tab;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
  if (tab === "dead-letters") {
    const select = $("#dlq-queue");
    if (select.options.length) select.value = wantedQueue();
    loadLetters();
  }
  if (tab === "topology") loadTopology();
}

// ---- overview ------------------------------------------------------------------------------

function renderQueues(status) {
  const body = $("#queues tbody");
  body.replaceChildren();
  for (const q of status.queues) {
    const waiting = (q.ready || 0) + (q.unacked || 0);
    const name = q.dead_letter && waiting > 0
      ? el("a", { href: `#dead-letters/${q.name}` }, q.name)
      : q.present ? q.name : `${q.name} (missing)`;
    const row = el("tr", { "data-queue": q.name, class: [q.dead_letter ? "dead-letter" : "", waiting > 0 ? "has-messages" : "", q.present ? "" : "missing"].join(" ") },
      el("td", {}, name), el("td", {}, q.type),
      el("td", { class: "num ready" }, count(q.ready)), el("td", { class: "num" }, count(q.unacked)),
      el("td", { class: "num" }, count(q.consumers)), el("td", { class: "num" }, rate(q.publish_rate)),
      el("td", { class: "num" }, rate(q.deliver_rate)), el("td", { class: "num" }, rate(q.ack_rate)));
    body.append(row);
  }
  $("#dead-count").textContent = status.dead_letters > 0 ? String(status.dead_letters) : "";
  $("#vhost").textContent = `vhost ${status.vhost}`;
  const drift = $("#drift");
  drift.replaceChildren(...(status.drift.length ? status.drift.map((d) => el("li", { class: "bad" }, d)) : [el("li", { class: "ok" }, "none")]));
}

function renderWorkers(workers) {
  const body = $("#workers tbody");
  body.replaceChildren();
  for (const w of workers) {
    const mean = w.handler_seconds_count > 0 ? `${((w.handler_seconds_sum / w.handler_seconds_count) * 1000).toFixed(1)} ms` : "-";
    const m = w.messages || {};
    body.append(el("tr", { "data-worker": w.http },
      el("td", {}, w.name), el("td", {}, w.service || "-"), el("td", {}, w.http),
      el("td", { class: w.healthy ? "ok" : "bad" }, w.healthy ? "healthy" : w.health),
      el("td", { class: w.ready ? "ok" : "bad" }, w.ready === null ? "-" : w.ready ? "ready" : "not ready"),
      el("td", { class: "num" }, String(m.success || 0)), el("td", { class: "num" }, String(m.retried || 0)),
      el("td", { class: "num" }, String(m.dead_lettered || 0)), el("td", { class: "num" }, mean)));
  }
  $("#workers-none").hidden = workers.length > 0;
}

function renderOutbox(outbox) {
  const el = $("#outbox");
  if (!outbox) {
    el.className = "hint";
    el.textContent = "No order service found (producer serve announces itself to the console once it connects).";
    return;
  }
  const waiting = outbox.depth === 0
    ? "empty: every accepted order is published"
    : `${outbox.depth} messages waiting, the oldest for ${outbox.oldest_unpublished_seconds.toFixed(1)} s`;
  el.className = outbox.depth > 0 && outbox.oldest_unpublished_seconds > 10 ? "warn" : "";
  el.textContent = `${outbox.services} order service${outbox.services === 1 ? "" : "s"}: outbox ${waiting}; `
    + `${outbox.accepted} orders accepted, ${outbox.relayed} messages relayed since start.`;
}

function record(overview) {
  const service = overview.status.queues.filter((q) => !q.dead_letter);
  const publish = service.reduce((a, q) => a + (q.publish_rate || 0), 0);
  const ack = service.reduce((a, q) => a + (q.ack_rate || 0), 0);
  const sum = overview.workers.reduce((a, w) => a + w.handler_seconds_sum, 0);
  const n = overview.workers.reduce((a, w) => a + w.handler_seconds_count, 0);
  let latencyMs = null;
  if (state.lastLatency) {
    const dn = n - state.lastLatency.count;
    const ds = sum - state.lastLatency.sum;
    // A restarted worker resets its counters: skip that interval.
    if (dn > 0 && ds >= 0) latencyMs = (ds / dn) * 1000;
  }
  state.lastLatency = { sum, count: n };
  state.history.push({ publish, ack, latencyMs });
  if (state.history.length > HISTORY) state.history.shift();
}

function drawChart(svg, series, unit) {
  const values = series.flatMap((s) => state.history.map((h) => h[s.key]).filter((v) => v !== null));
  const max = Math.max(1, ...values);
  svg.replaceChildren();
  for (const s of series) {
    const points = state.history
      .map((h, i) => (h[s.key] === null ? null : `${(i / Math.max(state.history.length - 1, 1)) * 400},${120 - (h[s.key] / max) * 115}`))
      .filter((p) => p !== null)
      .join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points);
    line.setAttribute("class", s.key);
    svg.append(line);
  }
  $(`#${svg.id}-max`).textContent = `max ${max.toFixed(1)} ${unit} over the last ${Math.round((state.history.length * POLL_MS) / 1000)} s`;
}

async function pollOverview() {
  try {
    const overview = await api("/api/overview");
    showError("");
    state.deadQueues = overview.dead_letter_queues;
    renderQueues(overview.status);
    renderWorkers(overview.workers);
    renderOutbox(overview.outbox);
    record(overview);
    drawChart($("#chart-throughput"), [{ key: "publish" }, { key: "ack" }], "msg/s");
    drawChart($("#chart-latency"), [{ key: "latencyMs" }], "ms");
    $("#updated").textContent = `updated ${new Date(overview.at).toLocaleTimeString()}`;
    fillQueueSelect();
  } catch (e) {
    showError(`overview: ${e.message}`);
  }
}

// ---- dead letters --------------------------------------------------------------------------

// The queue in the address (`#dead-letters/orders.dead`), else orders.dead, else the first.
function wantedQueue() {
  const wanted = decodeURIComponent(location.hash.split("/")[1] || "");
  if (state.deadQueues.includes(wanted)) return wanted;
  return state.deadQueues.includes("orders.dead") ? "orders.dead" : state.deadQueues[0];
}

function fillQueueSelect() {
  const select = $("#dlq-queue");
  if (select.options.length === state.deadQueues.length) return;
  select.replaceChildren(...state.deadQueues.map((q) => el("option", { value: q }, q)));
  select.value = wantedQueue();
  if (currentTab() === "dead-letters") loadLetters();
}

function selectedQueue() {
  return $("#dlq-queue").value || decodeURIComponent(location.hash.split("/")[1] || "") || "orders.dead";
}

function matchesFilter(letter) {
  const f = $("#dlq-filter").value.trim().toLowerCase();
  if (!f) return true;
  return [letter.id, letter.reason, letter.source_queue].some((v) => (v || "").toLowerCase().includes(f));
}

function shownLetters() {
  return state.letters.filter(matchesFilter);
}

function updateButtons() {
  const shownIds = new Set(shownLetters().map((l) => l.id));
  for (const id of [...state.selected]) if (!shownIds.has(id)) state.selected.delete(id);
  const none = state.selected.size === 0;
  $("#replay-selected").disabled = none;
  $("#purge-selected").disabled = none;
  $("#replay-selected").textContent = `Replay selected (${state.selected.size})…`;
  $("#purge-selected").textContent = `Purge selected (${state.selected.size})…`;
}

function renderLetters() {
  const body = $("#letters tbody");
  body.replaceChildren();
  const shown = shownLetters();
  for (const l of shown) {
    const box = el("input", { type: "checkbox", checked: state.selected.has(l.id), title: "select" });
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(l.id); else state.selected.delete(l.id);
      updateButtons();
    });
    const open = el("button", { type: "button", class: "link show" }, l.id);
    open.addEventListener("click", () => showLetter(l.id));
    body.append(el("tr", { "data-id": l.id },
      el("td", {}, box), el("td", {}, open), el("td", {}, l.source_queue || "-"),
      el("td", { class: "reason" }, l.reason || "-"), el("td", { class: "num" }, count(l.attempts)),
      el("td", { class: "num" }, String(l.replayed)), el("td", { class: "num" }, age(l.age_secs))));
  }
  $("#letters-summary").textContent = `${shown.length} of ${state.letters.length} dead letter(s) read from ${selectedQueue()} shown`;
  updateButtons();
}

async function loadLetters() {
  const queue = selectedQueue();
  try {
    const listing = await api(`/api/dead-letters/${encodeURIComponent(queue)}`);
    state.letters = listing.letters;
    showError("");
    renderLetters();
  } catch (e) {
    showError(`dead letters: ${e.message}`);
  }
}

async function showLetter(id) {
  const queue = selectedQueue();
  try {
    const l = await api(`/api/dead-letters/${encodeURIComponent(queue)}/messages/${encodeURIComponent(id)}`);
    $("#letter-id").textContent = l.id;
    $("#letter-reason").textContent = l.reason || "-";
    $("#letter-source").textContent = l.source_queue || "-";
    $("#letter-attempts").textContent = count(l.attempts);
    $("#letter-age").textContent = age(l.age_secs);
    $("#letter-route").textContent = `exchange '${l.exchange}', routing key '${l.routing_key}'`;
    $("#letter-headers tbody").replaceChildren(...l.headers.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
    $("#letter-body").textContent = l.body;
    $("#letter").hidden = false;
    $("#letter").scrollIntoView({ block: "nearest" });
  } catch (e) {
    showError(`dead letter ${id}: ${e.message}`);
  }
}

function confirmDialog(title, text) {
  return new Promise((resolve) => {
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm").hidden = false;
    const done = (answer) => {
      $("#confirm").hidden = true;
      $("#confirm-yes").onclick = null;
      $("#confirm-cancel").onclick = null;
      resolve(answer);
    };
    $("#confirm-yes").onclick = () => done(true);
    $("#confirm-cancel").onclick = () => done(false);
  });
}

function showResult(text, failed) {
  const p = $("#result");
  p.textContent = text;
  p.className = failed ? "result failed" : "result";
  p.hidden = false;
}

// Replay or purge the selection: a dry run counts what would happen, the operator confirms,
// then the same request runs for real.
async function act(kind) {
  const queue = selectedQueue();
  const ids = [...state.selected];
  const path = `/api/dead-letters/${encodeURIComponent(queue)}/${kind}`;
  try {
    const dry = await post(path, { ids, dry_run: true });
    const counts = dry.counts || dry;
    const would = kind === "replay" ? counts.matched - counts.failed : counts.matched;
    let text = kind === "replay"
      ? `${would} of the ${ids.length} selected dead letter(s) will be moved back to their source queues (published and confirmed before they leave ${queue}).`
      : `${would} of the ${ids.length} selected dead letter(s) will be deleted from ${queue} for good.`;
    if (kind === "replay" && counts.refused > 0) text += ` ${counts.refused} will stay: their source queue is not one that dead-letters into ${queue}.`;
    const yes = await confirmDialog(kind === "replay" ? "Replay dead letters?" : "Purge dead letters?", text);
    if (!yes) return;
    const done = await post(path, { ids, dry_run: false });
    const c = done.counts || done;
    showResult(kind === "replay"
      ? `replayed ${c.done} of ${ids.length} selected (${c.failed} failed and left, ${c.refused} refused)`
      : `purged ${c.done} of ${ids.length} selected`, c.failed > 0);
    state.selected.clear();
    $("#letter").hidden = true;
    await loadLetters();
  } catch (e) {
    showResult(`${kind} failed: ${e.message}`, true);
  }
}

// ---- topology ------------------------------------------------------------------------------

async function loadTopology() {
  try {
    const [view, svg] = await Promise.all([
      api("/api/topology"),
      fetch("/api/topology.svg").then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`)))),
    ]);
    $("#topology-source").textContent = view.source;
    const doc = new DOMParser().parseFromString(svg, "image/svg+xml");
    $("#topology-picture").replaceChildren(document.importNode(doc.documentElement, true));
    $("#topology-drift").replaceChildren(...(view.drift.length ? view.drift.map((d) => el("li", { class: "bad" }, d)) : [el("li", { class: "ok" }, "none")]));
  } catch (e) {
    showError(`topology: ${e.message}`);
  }
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", showTab);
  $("#dlq-queue").addEventListener("change", () => { state.selected.clear(); loadLetters(); });
  $("#dlq-filter").addEventListener("input", renderLetters);
  $("#dlq-refresh").addEventListener("click", loadLetters);
  $("#select-all").addEventListener("change", (e) => {
    for (const l of shownLetters()) if (e.target.checked) state.selected.add(l.id); else state.selected.delete(l.id);
    renderLetters();
  });
  $("#replay-selected").addEventListener("click", () => act("replay"));
  $("#purge-selected").addEventListener("click", () => act("purge"));
  showTab();
  pollOverview();
  setInterval(pollOverview, POLL_MS);
});
