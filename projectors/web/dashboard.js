// rolebus dashboard page: polls /api/summary and draws the figures with Plotly
// (served from the installed plotly wheel, no CDN). Every number is also written
// as text into the summary table, with its raw value in data-value, so the page
// can be read by people, screen readers and tests alike.
"use strict";

const REFRESH_S = Number(document.querySelector('meta[name="rolebus-refresh-s"]').content) || 5;
const PASSED = ["minutes", "start", "end", "tenant", "role"];

function apiUrl() {
  const here = new URLSearchParams(window.location.search);
  const out = new URLSearchParams();
  for (const key of PASSED) {
    if (here.get(key)) out.set(key, here.get(key));
  }
  return "api/summary?" + out.toString();
}

const fmt = {
  int: (v) => (v === null || v === undefined ? "-" : String(v)),
  qps: (v) => (v === null || v === undefined ? "-" : v.toFixed(3)),
  ms: (v) => (v === null || v === undefined ? "-" : v.toFixed(1)),
  pct: (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(2) + " %"),
};

// [group, label, metric key, value getter, format]
function summaryRows(s) {
  const rows = [
    ["Traffic", "events", "events", s.events, fmt.int],
    ["Traffic", "QPS (events/s)", "qps", s.qps, fmt.qps],
  ];
  for (const [a, n] of Object.entries(s.messages)) rows.push(["Messages", a, "messages." + a, n, fmt.int]);
  for (const [p, v] of Object.entries(s.latency_ms)) {
    rows.push(["Assistant latency (ms)", p, "latency_ms." + p, v, fmt.ms]);
  }
  rows.push(["Assistant latency (ms)", "latencies counted", "latency_count", s.latency_count, fmt.int]);
  rows.push(["Tokens", "in", "tokens_in", s.tokens_in, fmt.int]);
  rows.push(["Tokens", "out", "tokens_out", s.tokens_out, fmt.int]);
  for (const [f, r] of Object.entries(s.flag_rates)) {
    rows.push(["Flag rates (÷ assistant messages)", f, "flag_rates." + f, r, fmt.pct]);
  }
  const reasons = Object.entries(s.rejections);
  if (reasons.length === 0) rows.push(["Rejections", "none", "rejections.total", 0, fmt.int]);
  for (const [r, n] of reasons) rows.push(["Rejections", r, "rejections." + r, n, fmt.int]);
  for (const [k, n] of Object.entries(s.lifecycle)) rows.push(["Lifecycle", k, "lifecycle." + k, n, fmt.int]);
  rows.push(["Lifecycle", "rollbacks", "rollbacks", s.rollbacks, fmt.int]);
  for (const [k, n] of Object.entries(s.roles_by_state)) {
    rows.push(["Roles now", k, "roles_by_state." + k, n, fmt.int]);
  }
  rows.push(["Projection lag (ms)", "avg", "lag_ms_avg", s.lag_ms_avg, fmt.ms]);
  rows.push(["Projection lag (ms)", "max", "lag_ms_max", s.lag_ms_max, fmt.int]);
  return rows;
}

function renderSummary(s) {
  const body = document.querySelector("#summary tbody");
  const out = [];
  let group = null;
  for (const [g, label, key, value, format] of summaryRows(s)) {
    if (g !== group) {
      group = g;
      const tr = document.createElement("tr");
      tr.className = "group";
      const th = document.createElement("th");
      th.colSpan = 2;
      th.textContent = g;
      tr.appendChild(th);
      out.push(tr);
    }
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = label;
    const td = document.createElement("td");
    td.dataset.metric = key;
    td.dataset.value = value === null || value === undefined ? "" : String(value);
    td.textContent = format(value);
    tr.append(th, td);
    out.push(tr);
  }
  body.replaceChildren(...out);
}

const LAYOUT = {
  margin: { l: 50, r: 15, t: 32, b: 40 },
  legend: { orientation: "h", y: -0.18 },
  font: { family: "DejaVu Sans, Arial, sans-serif", size: 11 },
};
const CONFIG = { displayModeBar: false, responsive: true };

function draw(id, title, traces, extra) {
  const layout = Object.assign({}, LAYOUT, { title: { text: title, font: { size: 13 } } }, extra || {});
  Plotly.react(id, traces, layout, CONFIG);
}

function line(x, y, name, extra) {
  return Object.assign({ x, y, name, type: "scatter", mode: "lines+markers" }, extra || {});
}

// Whole-minute ticks (about 8 of them) on the time axes: the data is per minute.
function timeAxis(s) {
  const minutes = Math.max(1, s.series.length);
  return { xaxis: { type: "date", tickformat: "%H:%M", dtick: 60000 * Math.ceil(minutes / 8) } };
}

// Counts never need fractional ticks.
function countAxis(values, axis) {
  const most = Math.max(0, ...values);
  return most <= 10 ? { [axis]: { dtick: 1, rangemode: "tozero" } } : {};
}

function renderCharts(s) {
  const x = s.series.map((p) => p.minute);
  const pick = (f) => s.series.map(f);
  const time = timeAxis(s);
  draw("chart-events", "Events per minute", [
    { x, y: pick((p) => p.events), name: "events", type: "bar" },
  ], time);
  draw("chart-messages", "Messages per minute by author",
    Object.keys(s.messages).map((a) => ({ x, y: pick((p) => p.messages[a]), name: a, type: "bar" })),
    Object.assign({ barmode: "stack", legend: Object.assign({}, LAYOUT.legend, { traceorder: "normal" }) }, time));
  draw("chart-latency", "Assistant latency (ms)",
    Object.keys(s.latency_ms).map((q) => line(x, pick((p) => p.latency_ms[q]), q)), time);
  draw("chart-tokens", "Tokens per minute",
    [line(x, pick((p) => p.tokens_in), "in"), line(x, pick((p) => p.tokens_out), "out")], time);
  draw("chart-flags", "Flag rate per minute (÷ assistant messages, %)",
    Object.keys(s.flags).map((f) => line(x, pick((p) => (p.messages.assistant ? (100 * p.flags[f]) / p.messages.assistant : null)), f)),
    time);
  // A minute without projected events has no lag (a gap), not a lag of 0.
  draw("chart-lag", "Projection lag (ms)", [
    line(x, pick((p) => p.lag_ms_avg), "avg"),
    line(x, pick((p) => (p.lag_ms_avg === null ? null : p.lag_ms_max)), "max"),
  ], time);
  const reasons = Object.keys(s.rejections);
  draw("chart-rejections", "Rejections by reason (window)", [
    { x: reasons.map((r) => s.rejections[r]), y: reasons, type: "bar", orientation: "h", name: "rejections" },
  ], Object.assign(countAxis(reasons.map((r) => s.rejections[r]), "xaxis"), { yaxis: { automargin: true } }));
  const kinds = Object.keys(s.lifecycle).concat(["rollbacks"]);
  const transitions = kinds.map((k) => (k === "rollbacks" ? s.rollbacks : s.lifecycle[k]));
  draw("chart-lifecycle", "Lifecycle transitions (window)", [
    { x: kinds, y: transitions, type: "bar", name: "transitions" },
  ], countAxis(transitions, "yaxis"));
}

function renderScope(s) {
  const w = s.window;
  const parts = [
    "tenant: " + (w.tenant || "all"),
    "role: " + (w.role || "all"),
    w.start.replace("+00:00", "Z") + " → " + w.end.replace("+00:00", "Z"),
  ];
  document.getElementById("scope").textContent = parts.join(" · ");
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch(apiUrl(), { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    renderScope(body);
    renderSummary(body);
    renderCharts(body);
    status.className = "";
    status.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC · every " + REFRESH_S + " s";
    document.body.dataset.state = "ready";
  } catch (err) {
    status.className = "error";
    status.textContent = "refresh failed: " + err.message;
    document.body.dataset.state = "error";
  }
}

refresh();
setInterval(refresh, REFRESH_S * 1000);
