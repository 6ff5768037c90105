// The cellar board's shared code: the API key, fetching the service's own JSON, formats.
// Every number on the pages is the API's (the page only formats it), so the board never
// shows what the API would not answer.
"use strict";

const params = new URLSearchParams(location.search);
if (params.get("key")) localStorage.setItem("brewcast-key", params.get("key"));
const KEY = params.get("key") || localStorage.getItem("brewcast-key") || "";
const REFRESH_MS = 30000;

function withKey(path) {
  return KEY ? `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(KEY)}` : path;
}

async function api(path, options = {}) {
  const headers = Object.assign({ "content-type": "application/json" }, options.headers || {});
  if (KEY) headers["X-API-Key"] = KEY;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ? JSON.stringify(body.detail) : response.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A value shown with its raw API value in data-value (what the browser test compares).
function field(name, value, text) {
  return el("span", { "data-field": name, "data-value": value === null ? "" : String(value) }, text);
}

// The cellar's time zone (the service's BREWCAST_LOCAL_TIMEZONE): every time on the pages
// is in it, whatever the tablet's own zone, and the header says which, once.
let ZONE = "UTC";
function useZone(data) {
  if (data.timezone) ZONE = data.timezone;
  const node = document.getElementById("zone");
  if (node) { node.textContent = `times in ${ZONE}`; node.setAttribute("data-value", ZONE); }
}

function when(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString([], {
    weekday: "short", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit",
    timeZone: ZONE,
  });
}

// An 80% finish window; one with no end (batches like it have stalled) says so, never "never".
function windowText(w) {
  if (!w || !w.earliest) return "—";
  return w.latest ? `${when(w.earliest)} – ${when(w.latest)}` : `after ${when(w.earliest)}, no end: batches like it have stalled`;
}

function hoursText(hours) {
  if (hours === null || hours === undefined) return "—";
  if (Math.abs(hours) < 1) return `${Math.round(hours * 60)} min`;
  if (Math.abs(hours) < 48) return `${hours.toFixed(1)} h`;
  return `${(hours / 24).toFixed(1)} days`;
}

function signedHours(e, none = "—") {
  return e === null || e === undefined ? none : `${e > 0 ? "+" : ""}${e.toFixed(1)} h`;
}

// How the forecasts of the batch's brand (or style, strain, cellar) did on its last
// finished batches: the API's track record, in one line.
function trackRecordText(record) {
  if (!record) return "Track record: none yet (no finished batch of this brand, style or strain with a forecast near its finish).";
  const group = record.group === "all" ? "the cellar" : `${record.group.replace("yeast_strain", "strain")} ${record.value}`;
  const parts = Object.entries(record.hours_before_finish).filter(([, r]) => r.forecasts).map(([h, r]) =>
    `${h} h before: median ${signedHours(r.median_error_hours)}` +
    (r.windows ? `, window held ${r.windows_held} of ${r.windows}` : ""));
  return `Track record (${group}, last ${record.batches.length} finished): ${parts.join(" · ")}`;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function setStatus(text, bad = false) {
  const node = document.getElementById("status");
  if (node) { node.textContent = text; node.className = bad ? "status error" : "status"; }
}

function navLinks() {
  for (const a of document.querySelectorAll("a[data-keep-key]")) a.href = withKey(a.getAttribute("href"));
}

// Acknowledge or override a batch's ready event (the same API a script would use).
async function answerReady(batchId, version, answer) {
  const by = prompt("Your name (shown on the board):", localStorage.getItem("brewcast-by") || "");
  if (!by) return;
  localStorage.setItem("brewcast-by", by);
  let reason = null;
  if (answer === "overridden") {
    reason = prompt("Why is it not ready? (e.g. still 0.4 °P above terminal)");
    if (!reason) return;
  }
  await api(`/cellar/batches/${encodeURIComponent(batchId)}/ready`, {
    method: "POST",
    body: JSON.stringify({ answer, by, reason, model_version: version }),
  });
}

function eventLine(event, batchId, after) {
  if (!event) return null;
  const line = el("div", { class: "event", "data-field": "ready-event", "data-value": event.event_id },
    el("span", { class: "pill ready" }, "READY"),
    `since ${when(event.emitted_at)} (model ${event.model_version})`);
  if (event.answer) {
    line.append(el("span", { "data-field": "answer", "data-value": event.answer },
      `${event.answer} by ${event.answered_by}${event.reason ? `: ${event.reason}` : ""}`));
  } else {
    const act = (answer) => async () => {
      try { await answerReady(batchId, event.model_version, answer); await after(); }
      catch (error) { setStatus(`not stored: ${error.message}`, true); }
    };
    line.append(el("button", { onclick: act("acknowledged") }, "Acknowledge"),
      el("button", { class: "secondary", onclick: act("overridden") }, "Not ready…"));
  }
  return line;
}

// Runs a page: load() now and every `every` ms, its failure said in the status line; the
// returned refresh is what an action calls after it changed something.
function run(load, what, every = REFRESH_MS) {
  const refresh = async () => {
    try { await load(); } catch (error) { setStatus(`cannot load the ${what}: ${error.message}`, true); }
  };
  navLinks();
  refresh();
  if (every) setInterval(refresh, every);
  return refresh;
}
