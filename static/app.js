// dtu-supervisor console: plain JavaScript, no framework, no build step; every asset is
// served by the server itself. Everything that comes from the server is put into the page
// with textContent / attributes, never parsed as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "dtu-token";
const POLL_MS = 2000; // device list, when the live stream is not available
const PAGE_MS = 5000; // device page panels (packets, events, chart)
const RECONNECT_MIN_MS = 2000;
const RECONNECT_MAX_MS = 60000;
const MAX_ROWS = 500; // devices per page of the list; the server pages and filters a bigger fleet
const FILTER_MS = 250; // typing in the filter asks the server once it pauses this long
const TRACK_MS = 2000; // a queued command's status is re-read this often until it is final
const FINAL = ["ok", "failed", "timeout", "expired"]; // a command's final statuses

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  view: "login",
  device: null, // id of the open device page
  devices: new Map(), // the list's page, in the server's order: id -> row (as /api/devices) + lastEvent
  open: null, // the device of the open device page (as /api/devices/{id}) + lastEvent
  counts: { total: 0, online: 0 }, // devices matching the list's filters (X-Total-Count, X-Online-Count)
  after: "", // the list page starts after this id ("" for the first page)
  earlier: [], // the `after` of each page before this one, for "previous"
  next: null, // the `after` of the next page, from the Link header; null on the last page
  filterTimer: null,
  values: {}, // values of the open device: name -> {value, unit, at}
  ws: null,
  live: false, // true while the WebSocket stream is open
  reconnectMs: RECONNECT_MIN_MS,
  reconnectTimer: null,
  pollTimer: null,
  pageTimer: null,
  webhooks: false, // whether /api/webhooks answers for this token
  chartAt: 0, // when the chart was last fetched
  renderTimer: null,
  refetch: null,
  generation: 0, // bumped on logout so late answers of an old session are ignored
  track: null, // the queued command followed on the device page: {id, device, trail, timer, done}
  deliveriesOf: null, // webhook whose deliveries are shown
};

// ---------- HTTP ----------

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const gen = state.generation;
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (gen !== state.generation) throw new Unauthorized("session ended");
  if (res.status === 401 && state.view !== "login") {
    logout("Your token was refused (401): " + errorText(body, res.status) + ". Sign in again.");
    throw new Unauthorized("unauthorized");
  }
  return { status: res.status, body, headers: res.headers };
}

function errorText(body, status) {
  if (body && typeof body === "object" && typeof body.error === "string") return body.error;
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 200);
  return "HTTP " + status;
}

function quiet(promise) {
  promise.catch((e) => { if (!(e instanceof Unauthorized)) console.warn(e); });
}

// ---------- DOM helpers ----------

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cell(row, text, cls) {
  const td = el("td", text == null ? "" : text, cls);
  row.appendChild(td);
  return td;
}

function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

function ago(t) {
  if (!t) return "";
  const s = Math.round((Date.now() - Date.parse(t)) / 1000);
  if (!isFinite(s)) return "";
  if (s < 5) return "just now";
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function formatValue(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(10)));
  if (v == null) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

// ---------- views and routing ----------

const VIEWS = ["login", "devices", "device", "webhooks"];

function show(view) {
  state.view = view;
  for (const v of VIEWS) $("#" + v).hidden = v !== view;
  const inside = view !== "login";
  $("#logout").hidden = !inside;
  $("#nav").hidden = !inside;
  $("#nav-webhooks").hidden = !state.webhooks;
  if (!inside) setLive("off");
}

function route() {
  if (!state.token) { show("login"); return; }
  const hash = location.hash;
  clearInterval(state.pageTimer);
  state.pageTimer = null;
  let m;
  if ((m = hash.match(/^#\/device\/(.+)$/))) {
    openDevice(decodeURIComponent(m[1]));
  } else if (hash === "#/webhooks") {
    state.device = null;
    show("webhooks");
    quiet(refreshWebhooks());
  } else {
    state.device = null;
    show("devices");
    renderDevices();
    quiet(refreshDevices());
  }
}

// ---------- login / logout ----------

async function login(token) {
  state.token = token;
  const gen = ++state.generation;
  let res;
  try {
    res = await fetch("/api/devices?limit=1", { headers: { Authorization: "Bearer " + token } });
  } catch (e) {
    $("#login-error").textContent = "Cannot reach the server: " + e.message;
    return;
  }
  if (gen !== state.generation) return;
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (res.status !== 200) {
    state.token = "";
    $("#login-error").textContent = res.status === 401
      ? "The token was refused (401): " + errorText(body, res.status) + "."
      : "Sign-in failed: " + errorText(body, res.status);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login-error").textContent = "";
  $("#token").value = "";
  await enter();
}

async function enter() {
  state.webhooks = false;
  connectStream();
  // Admin-only and possibly absent: the tab appears only if it answers.
  try {
    const { status } = await api("/api/webhooks");
    state.webhooks = status === 200;
    $("#nav-webhooks").dataset.probed = String(status);
  } catch (e) {
    if (e instanceof Unauthorized) return;
  }
  if (!location.hash || location.hash === "#") location.hash = "#/devices";
  route();
}

function logout(message) {
  state.generation++;
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.device = null;
  state.devices.clear();
  state.open = null;
  state.after = "";
  state.earlier = [];
  state.webhooks = false;
  delete $("#nav-webhooks").dataset.probed;
  closeStream();
  clearInterval(state.pollTimer);
  clearInterval(state.pageTimer);
  state.pollTimer = state.pageTimer = null;
  stopTracking();
  $("#device-table tbody").replaceChildren();
  $("#login-error").textContent = message || "";
  history.replaceState(null, "", location.pathname);
  show("login");
  $("#token").focus();
}

// ---------- live updates: WebSocket stream, polling as fallback ----------

function setLive(mode) {
  const badge = $("#live");
  badge.dataset.mode = mode;
  badge.textContent = mode === "live" ? "● live" : mode === "polling" ? "○ polling every " + POLL_MS / 1000 + " s" : "";
}

function connectStream() {
  closeStream();
  if (!state.token || typeof WebSocket === "undefined") { startPolling(); return; }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/api/stream?token=${encodeURIComponent(state.token)}`;
  const gen = state.generation;
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (_) {
    startPolling();
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  // Until it opens, polling keeps the list fresh.
  startPolling();
  ws.onopen = () => {
    if (gen !== state.generation) { ws.close(); return; }
    state.live = true;
    state.reconnectMs = RECONNECT_MIN_MS;
    stopPolling();
    setLive("live");
    // Whatever happened while the socket was closed: one full refresh.
    quiet(refreshDevices());
  };
  ws.onmessage = (msg) => {
    if (gen !== state.generation) return;
    let ev;
    try { ev = JSON.parse(msg.data); } catch (_) { return; }
    if (ev && typeof ev === "object") handleEvent(ev);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.live = false;
    if (gen !== state.generation || !state.token) return;
    startPolling();
    scheduleReconnect();
  };
  ws.onerror = () => { /* onclose follows and falls back to polling */ };
}

function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  const delay = state.reconnectMs;
  state.reconnectMs = Math.min(state.reconnectMs * 2, RECONNECT_MAX_MS);
  state.reconnectTimer = setTimeout(() => { if (state.token) connectStream(); }, delay);
}

function closeStream() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  const ws = state.ws;
  state.ws = null;
  state.live = false;
  if (ws) { ws.onclose = null; ws.close(); }
}

function startPolling() {
  setLive("polling");
  if (state.pollTimer) return;
  state.pollTimer = setInterval(() => { if (!document.hidden) quiet(refreshDevices()); }, POLL_MS);
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

// One event of the stream: {"id","event","device_id","at","data"}. It changes the device's
// row when the device is on the list's page, and the device page when it is open; the list's
// counts follow at once and are put right by the server at the next fetch.
function handleEvent(ev) {
  const id = typeof ev.device_id === "string" ? ev.device_id : null;
  if (!id) {
    // Not about one device (e.g. a notice that events were dropped): reload the list.
    refetchSoon();
    return;
  }
  const data = ev.data && typeof ev.data === "object" ? ev.data : {};
  let d = state.devices.get(id);
  if (!d && ev.event === "device.online") {
    // A device not on this page: it may belong here (a new device); the server says.
    refetchSoon();
    const row = { id, online: false, protocol: data.protocol || "", profile: data.profile || "",
      remote_addr: data.remote_addr || "", connected_at: null, last_seen: null };
    if (state.devices.size < MAX_ROWS && matchesFilter(row) && !state.next) {
      state.devices.set(id, row);
      state.counts.total++;
      d = row;
    }
  }
  for (const target of [d, state.device === id ? state.open : null]) {
    if (target) applyEvent(target, ev, data, target === d);
  }
  if (state.device === id && ev.event === "telemetry" && data.values && typeof data.values === "object") {
    for (const [name, value] of Object.entries(data.values)) {
      const old = state.values[name] || {};
      state.values[name] = { value, unit: old.unit, at: ev.at };
    }
    renderValues();
    const point = $("#chart-point").value;
    if (point && point in data.values && Date.now() - state.chartAt > 3000) quiet(refreshChart());
  }
  if (d && state.view === "devices") scheduleRender();
  if (state.device === id && state.open) renderDeviceFacts(state.open);
}

// What one event changes of a device; `counted`: the device is a row of the list, whose
// online count follows it.
function applyEvent(d, ev, data, counted) {
  const wasOnline = !!d.online;
  switch (ev.event) {
    case "device.online":
      d.online = true;
      d.connected_at = ev.at;
      d.last_seen = ev.at;
      for (const k of ["protocol", "profile", "remote_addr"]) if (data[k] != null) d[k] = data[k];
      d.lastEvent = "online";
      break;
    case "device.offline":
      d.online = false;
      d.lastEvent = "offline" + (data.reason ? ": " + data.reason : "");
      break;
    case "telemetry":
      d.last_seen = ev.at;
      d.lastEvent = "telemetry";
      break;
    case "poll.failed":
      d.lastEvent = "poll failed" + (data.poll ? " (" + data.poll + ")" : "") + (data.error ? ": " + data.error : "");
      break;
    case "command.completed":
      d.lastEvent = "command " + (data.status || "completed");
      if (state.track && !state.track.done && data.command_id === state.track.id && typeof data.status === "string") {
        noteTrack(state.track, data.status, data);
      }
      break;
    default:
      d.lastEvent = String(ev.event || "");
  }
  if (counted && wasOnline !== !!d.online) state.counts.online += d.online ? 1 : -1;
}

// Many reasons to reload the list in a burst of events lead to one request.
function refetchSoon() {
  if (state.refetch) return;
  state.refetch = setTimeout(() => { state.refetch = null; quiet(refreshDevices()); }, 1000);
}

// A busy fleet sends many events a second: the table is redrawn at most every 250 ms.
function scheduleRender() {
  if (state.renderTimer) return;
  state.renderTimer = setTimeout(() => { state.renderTimer = null; if (state.view === "devices") renderDevices(); }, 250);
}

// ---------- device list ----------
// The server sorts, filters and pages (GET /api/devices?limit=&after=&q=&online=); the
// console shows one page of at most MAX_ROWS rows, so a fleet of any size stays quick.

function listFilter() {
  return { q: $("#filter").value.trim(), onlineOnly: $("#online-only").checked };
}

// The server's filter, for a row the console adds itself from an event.
function matchesFilter(d) {
  const { q, onlineOnly } = listFilter();
  if (onlineOnly && !d.online) return false;
  const text = q.toLowerCase();
  return !text || [d.id, d.remote_addr, d.profile, d.protocol].some((s) => String(s || "").toLowerCase().includes(text));
}

function setDevices(list) {
  if (!Array.isArray(list)) return;
  const page = new Map();
  for (const d of list) {
    if (!d || typeof d.id !== "string") continue;
    const old = state.devices.get(d.id);
    const row = Object.assign({}, d);
    if (old && old.lastEvent) row.lastEvent = old.lastEvent;
    page.set(d.id, row);
  }
  state.devices = page;
}

// The `after` of the next page, from `Link: </api/devices?...&after=...>; rel="next"`.
function nextAfter(link) {
  const m = /^<([^>]*)>\s*;\s*rel="next"/.exec(link || "");
  if (!m) return null;
  try {
    return new URL(m[1], location.origin).searchParams.get("after");
  } catch (_) {
    return null;
  }
}

// The query of the list's current page and filters.
function listQuery() {
  const { q, onlineOnly } = listFilter();
  const params = new URLSearchParams({ limit: String(MAX_ROWS) });
  if (state.after) params.set("after", state.after);
  if (q) params.set("q", q);
  if (onlineOnly) params.set("online", "true");
  return params.toString();
}

async function refreshDevices() {
  const asked = listQuery();
  const { status, body, headers } = await api("/api/devices?" + asked);
  if (status !== 200) {
    $("#devices-error").textContent = "Device list unavailable: " + errorText(body, status);
    return;
  }
  // The filter or page changed while this answer was out: the later question's answer wins.
  if (listQuery() !== asked) return;
  $("#devices-error").textContent = "";
  setDevices(body);
  const count = (name) => { const n = Number(headers.get(name)); return Number.isFinite(n) ? n : 0; };
  state.counts = { total: count("X-Total-Count"), online: count("X-Online-Count") };
  state.next = nextAfter(headers.get("Link"));
  if (state.view === "devices") renderDevices();
}

// A new filter or page: ask the server at once (the filter box waits for a pause in typing).
function listChanged(delay) {
  clearTimeout(state.filterTimer);
  state.filterTimer = setTimeout(() => { state.filterTimer = null; quiet(refreshDevices()); }, delay);
}

function filterChanged(delay) {
  state.after = "";
  state.earlier = [];
  state.next = null;
  listChanged(delay);
}

function turnPage(forward) {
  if (forward) {
    if (state.next == null) return;
    state.earlier.push(state.after);
    state.after = state.next;
  } else {
    if (!state.earlier.length) return;
    state.after = state.earlier.pop();
  }
  listChanged(0);
}

function renderDevices() {
  const onlineOnly = $("#online-only").checked;
  const { total, online } = state.counts;
  const filtered = !!listFilter().q || onlineOnly;
  $("#summary").textContent = `${online} online of ${total}` + (filtered ? " matching" : "");
  const tbody = $("#device-table tbody");
  const rows = [];
  for (const d of state.devices.values()) {
    // Went offline since the page was fetched: the next fetch drops it; hide it now.
    if (onlineOnly && !d.online) continue;
    const tr = el("tr", null, "device");
    tr.dataset.id = d.id;
    tr.dataset.online = String(!!d.online);
    const idCell = cell(tr, "");
    const a = el("a", d.id);
    a.href = "#/device/" + encodeURIComponent(d.id);
    idCell.appendChild(a);
    cell(tr, d.online ? "online" : "offline", "state " + (d.online ? "online" : "offline"));
    cell(tr, d.protocol);
    cell(tr, d.profile);
    cell(tr, d.remote_addr);
    cell(tr, when(d.connected_at));
    const seen = cell(tr, ago(d.last_seen));
    seen.title = when(d.last_seen);
    cell(tr, d.lastEvent || "");
    tr.addEventListener("click", (ev) => {
      if (ev.target.tagName !== "A") location.hash = "#/device/" + encodeURIComponent(d.id);
    });
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  $("#no-devices").hidden = total > 0 || filtered;
  const paged = state.next != null || state.earlier.length > 0;
  $("#pager").hidden = !paged;
  if (paged) {
    const first = state.earlier.length * MAX_ROWS + 1;
    $("#page-range").textContent = `Devices ${first}–${first + state.devices.size - 1} of ${total}`;
    $("#prev-devices").disabled = !state.earlier.length;
    $("#next-devices").disabled = state.next == null;
  }
}

// ---------- device page ----------

function openDevice(id) {
  const changed = state.device !== id;
  state.device = id;
  if (changed) {
    state.open = null;
    state.values = {};
    $("#device-title").textContent = "Device " + id;
    $("#device-facts").textContent = "";
    $("#device-state").textContent = "";
    $("#device-error").textContent = "";
    $("#chart-point").replaceChildren();
    $("#chart").replaceChildren();
    $("#chart-note").textContent = "";
    $("#cmd-status").textContent = "";
    $("#cmd-status").className = "";
    $("#cmd-result").textContent = "";
    $("#cmd-values-table").hidden = true;
    stopTracking();
    $("#cmd-track").hidden = true;
    $("#lock-state").textContent = "";
    $("#lock-state").className = "";
    delete $("#lock-state").dataset.locked;
    $("#lock-error").textContent = "";
    for (const t of ["#values", "#events", "#packets"]) $(t + " tbody").replaceChildren();
    const enc = encodeURIComponent(id);
    const tok = encodeURIComponent(state.token);
    // Downloads cannot carry a header: the token goes in the query of these two links.
    $("#export-csv").href = `/api/export?device=${enc}&format=csv&token=${tok}`;
    $("#export-xlsx").href = `/api/export?device=${enc}&format=xlsx&token=${tok}`;
    $("#export-csv").setAttribute("download", `${id}.csv`);
    $("#export-xlsx").setAttribute("download", `${id}.xlsx`);
  }
  show("device");
  quiet(refreshDevice());
  clearInterval(state.pageTimer);
  state.pageTimer = setInterval(() => { if (!document.hidden) quiet(refreshDevice()); }, PAGE_MS);
}

function renderDeviceFacts(d) {
  const badge = $("#device-state");
  badge.textContent = d.online ? "online" : "offline";
  badge.className = "badge " + (d.online ? "online" : "offline");
  const parts = [d.protocol, d.profile ? "profile " + d.profile : "", d.remote_addr,
    d.connected_at ? "connected " + when(d.connected_at) : "", d.last_seen ? "last seen " + ago(d.last_seen) : ""];
  $("#device-facts").textContent = parts.filter(Boolean).join(" · ");
}

async function refreshDevice() {
  const id = state.device;
  if (!id) return;
  const enc = encodeURIComponent(id);
  const one = await api(`/api/devices/${enc}`);
  if (state.device !== id) return;
  if (one.status !== 200) {
    $("#device-error").textContent = errorText(one.body, one.status);
    $("#device-state").textContent = "";
  } else {
    $("#device-error").textContent = "";
    const d = Object.assign({}, state.open && state.open.id === id ? state.open : {}, one.body);
    delete d.values;
    state.open = d;
    renderDeviceFacts(d);
    // Values come with the device; the telemetry stream keeps them fresh in between.
    state.values = Object.assign({}, one.body.values || {});
    renderValues();
  }
  const jobs = [refreshLock(), refreshChart(), refreshEvents(enc), refreshPackets(enc)];
  await Promise.all(jobs.map((p) => p.catch((e) => { if (e instanceof Unauthorized) throw e; console.warn(e); })));
}

function renderValues() {
  const tbody = $("#values tbody");
  const select = $("#chart-point");
  const names = Object.keys(state.values).sort();
  const rows = [];
  for (const name of names) {
    const v = state.values[name] || {};
    const tr = el("tr");
    tr.dataset.point = name;
    cell(tr, name);
    cell(tr, formatValue(v.value), "num");
    cell(tr, v.unit);
    cell(tr, v.raw != null ? formatValue(v.raw) : "", "num raw");
    cell(tr, when(v.at));
    rows.push(tr);
    if (![...select.options].some((o) => o.value === name)) select.add(new Option(name, name));
  }
  tbody.replaceChildren(...rows);
  $("#no-values").hidden = names.length > 0;
}

async function refreshChart() {
  const id = state.device;
  const point = $("#chart-point").value;
  if (!id || !point) return;
  state.chartAt = Date.now();
  const from = new Date(Date.now() - Number($("#chart-range").value) * 1000).toISOString();
  const q = `point=${encodeURIComponent(point)}&from=${encodeURIComponent(from)}&limit=1000`;
  const { status, body } = await api(`/api/devices/${encodeURIComponent(id)}/telemetry?${q}`);
  if (state.device !== id || $("#chart-point").value !== point) return;
  if (status !== 200 || !Array.isArray(body)) {
    $("#chart-note").textContent = "History unavailable: " + errorText(body, status);
    return;
  }
  const unit = (state.values[point] || {}).unit || "";
  drawChart(body.filter((r) => typeof r.value === "number" && !isNaN(Date.parse(r.at))), unit);
}

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text != null) e.textContent = String(text);
  return e;
}

// A line chart of [{value, at}] (newest first, as the API answers), drawn as SVG.
function drawChart(rows, unit) {
  const svg = $("#chart");
  svg.replaceChildren();
  const W = 640, H = 220, L = 56, R = 10, T = 10, B = 28;
  const note = $("#chart-note");
  if (rows.length === 0) { note.textContent = "No stored values in this range."; return; }
  const pts = rows.slice().reverse();
  const ts = pts.map((r) => Date.parse(r.at));
  const vs = pts.map((r) => r.value);
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t1 === t0) { t0 -= 30000; t1 += 30000; }
  let lo = Math.min(...vs), hi = Math.max(...vs);
  if (hi === lo) { lo -= 1; hi += 1; }
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  // axes and grid
  svg.appendChild(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" }));
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.appendChild(svgEl("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "tick" }, formatValue(Number(v.toPrecision(4)))));
  }
  for (let i = 0; i <= 3; i++) {
    const t = t0 + ((t1 - t0) * i) / 3;
    const d = new Date(t);
    const label = (t1 - t0) > 86400000 ? d.toLocaleDateString() + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleTimeString();
    svg.appendChild(svgEl("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle", class: "tick" }, label));
  }
  svg.appendChild(svgEl("polyline", {
    class: "series",
    points: pts.map((r, i) => `${x(ts[i]).toFixed(1)},${y(r.value).toFixed(1)}`).join(" "),
  }));
  if (pts.length <= 120) {
    pts.forEach((r, i) => {
      const c = svgEl("circle", { cx: x(ts[i]).toFixed(1), cy: y(r.value).toFixed(1), r: 2.5, class: "dot" });
      c.appendChild(svgEl("title", {}, `${formatValue(r.value)} ${unit} at ${when(r.at)}`));
      svg.appendChild(c);
    });
  }
  const last = rows[0];
  note.textContent = `${rows.length} values · min ${formatValue(Math.min(...vs))} · max ${formatValue(Math.max(...vs))} · latest ${formatValue(last.value)} ${unit} at ${when(last.at)}`;
}

async function refreshEvents(enc) {
  const id = state.device;
  const { status, body } = await api(`/api/events?device=${enc}&limit=50`);
  if (state.device !== id) return;
  const rows = [];
  for (const e of status === 200 && Array.isArray(body) ? body : []) {
    const tr = el("tr");
    cell(tr, e.event, "ev-" + String(e.event || "").replace(/[^a-z_]/g, ""));
    cell(tr, when(e.at));
    cell(tr, e.detail);
    rows.push(tr);
  }
  $("#events tbody").replaceChildren(...rows);
}

async function refreshPackets(enc) {
  const id = state.device;
  const { status, body } = await api(`/api/devices/${enc}/packets?limit=50`);
  if (state.device !== id) return;
  const rows = [];
  for (const p of status === 200 && Array.isArray(body) ? body : []) {
    const tr = el("tr", null, p.direction === "out" ? "out" : "in");
    cell(tr, p.direction === "out" ? "→ out" : "← in");
    cell(tr, p.kind);
    cell(tr, p.hex, "hex");
    cell(tr, when(p.at));
    rows.push(tr);
  }
  $("#packets tbody").replaceChildren(...rows);
}

// ---------- control lock ----------

// "locked by X until Y" of a lock answer or a 423 body, "" when it names no holder.
function heldBy(body) {
  if (!body || typeof body !== "object" || body.holder == null) return "";
  return `locked by ${body.holder}` + (body.expires_at ? ` until ${when(body.expires_at)}` : "");
}

function renderLock(status, body) {
  const p = $("#lock-state");
  if (status !== 200 || !body || typeof body !== "object") {
    delete p.dataset.locked;
    p.className = "error";
    p.textContent = "Lock state unavailable: " + errorText(body, status);
    return;
  }
  p.dataset.locked = String(body.locked === true);
  if (body.locked === true) {
    p.className = "locked";
    p.textContent = "Locked by " + String(body.holder) + (body.expires_at ? " until " + when(body.expires_at) : "");
  } else {
    p.className = "unlocked";
    p.textContent = "Not locked: any operator may send commands.";
  }
}

async function refreshLock() {
  const id = state.device;
  if (!id) return;
  const { status, body } = await api(`/api/devices/${encodeURIComponent(id)}/lock`);
  if (state.device !== id) return;
  renderLock(status, body);
}

// Takes (or extends) the lock with the ttl of the form, or releases it; then shows the state.
async function lockAction(take) {
  const id = state.device;
  if (!id) return;
  const err = $("#lock-error");
  err.textContent = "";
  let body = {};
  if (take && $("#lock-ttl").value.trim()) {
    try {
      body = { ttl_s: int("#lock-ttl", "lock time (s)", 1, 86400) };
    } catch (e) {
      err.textContent = e.message;
      return;
    }
  }
  const path = `/api/devices/${encodeURIComponent(id)}/lock`;
  const buttons = [$("#lock-take"), $("#lock-release")];
  for (const b of buttons) b.disabled = true;
  let res;
  try {
    res = await api(path, take
      ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }
      : { method: "DELETE" });
  } catch (e) {
    if (!(e instanceof Unauthorized)) err.textContent = "Request failed: " + e.message;
    return;
  } finally {
    for (const b of buttons) b.disabled = false;
  }
  if (state.device !== id) return;
  if (res.status !== 200) {
    err.textContent = res.status === 423 && heldBy(res.body)
      ? `423 refused: ${heldBy(res.body)}`
      : `${res.status} ${errorText(res.body, res.status)}`;
  }
  await refreshLock();
}

// ---------- commands ----------

function showCommandFields() {
  const type = $("#cmd-type").value;
  for (const e of document.querySelectorAll("#command-form [data-for]")) {
    e.hidden = !e.dataset.for.split(" ").includes(type);
  }
}

class InputError extends Error {}

function int(sel, what, lo, hi) {
  const s = $(sel).value.trim();
  if (!/^(0x[0-9a-fA-F]+|\d+)$/.test(s)) throw new InputError(`${what} must be a whole number`);
  const n = Number(s);
  if (n < lo || n > hi) throw new InputError(`${what} must be between ${lo} and ${hi}`);
  return n;
}

function commandBody() {
  const type = $("#cmd-type").value;
  let body;
  switch (type) {
    case "read":
      body = { type, function: Number($("#cmd-function").value), start: int("#cmd-start", "start", 0, 65535), count: int("#cmd-count", "count", 1, 2000) };
      break;
    case "write_register":
      body = { type, address: int("#cmd-address", "address", 0, 65535), value: int("#cmd-value", "value", 0, 65535) };
      break;
    case "write_registers": {
      const parts = $("#cmd-values").value.split(/[\s,;]+/).filter(Boolean);
      if (parts.length === 0) throw new InputError("values: give at least one");
      const values = parts.map((p) => {
        if (!/^(0x[0-9a-fA-F]+|\d+)$/.test(p) || Number(p) > 65535) throw new InputError(`values: ${p} is not a register value (0..65535)`);
        return Number(p);
      });
      body = { type, address: int("#cmd-address", "address", 0, 65535), values };
      break;
    }
    case "write_coil":
      body = { type, address: int("#cmd-address", "address", 0, 65535), value: $("#cmd-coil").checked };
      break;
    case "named": {
      const name = $("#cmd-name").value.trim();
      if (!name) throw new InputError("name: give the command's name");
      body = { type, name };
      break;
    }
    default: {
      const hex = $("#cmd-hex").value.trim();
      if (!hex) throw new InputError("hex: give the bytes to send");
      body = { type: "raw", hex };
    }
  }
  if ($("#cmd-timeout").value.trim()) body.timeout_ms = int("#cmd-timeout", "timeout ms", 1, 600000);
  if ($("#cmd-queue").checked) {
    body.queue_if_offline = true;
    if ($("#cmd-queue-ttl").value.trim()) body.ttl_s = int("#cmd-queue-ttl", "queue time (s)", 1, 2592000);
  } else if ($("#cmd-queue-ttl").value.trim()) {
    throw new InputError("queue time applies only with \"queue if offline\"");
  }
  return body;
}

async function sendCommand() {
  const status = $("#cmd-status");
  const result = $("#cmd-result");
  const table = $("#cmd-values-table");
  table.hidden = true;
  let body;
  try {
    body = commandBody();
  } catch (e) {
    status.className = "error";
    status.textContent = e.message;
    result.textContent = "";
    return;
  }
  const id = state.device;
  stopTracking();
  $("#cmd-track").hidden = true;
  status.className = "";
  status.textContent = "sending…";
  result.textContent = JSON.stringify(body);
  $("#cmd-send").disabled = true;
  let res;
  try {
    res = await api(`/api/devices/${encodeURIComponent(id)}/commands`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    if (!(e instanceof Unauthorized)) {
      status.className = "error";
      status.textContent = "Request failed: " + e.message;
    }
    return;
  } finally {
    $("#cmd-send").disabled = false;
  }
  if (state.device !== id) return;
  const ok = res.status >= 200 && res.status < 300;
  status.className = ok ? "ok" : "error";
  status.textContent = ok
    ? `${res.status} ${res.status === 202 ? "queued" : (res.body && res.body.status) || "ok"}`
    : res.status === 423 && heldBy(res.body)
      ? `423 refused: ${heldBy(res.body)}`
      : `${res.status} ${errorText(res.body, res.status)}`;
  result.textContent = typeof res.body === "string" ? res.body : JSON.stringify(res.body, null, 2);
  if (res.status === 423) quiet(refreshLock());
  if (res.status === 202 && res.body && typeof res.body.id === "string") {
    trackCommand(res.body.id, typeof res.body.status === "string" ? res.body.status : "queued");
  }
  const values = ok && res.body && res.body.result && res.body.result.values;
  if (values && typeof values === "object") {
    const rows = [];
    for (const [name, v] of Object.entries(values)) {
      const tr = el("tr");
      cell(tr, name);
      cell(tr, formatValue(v && typeof v === "object" ? v.value : v), "num");
      cell(tr, v && v.unit);
      cell(tr, v && v.raw != null ? formatValue(v.raw) : "");
      rows.push(tr);
    }
    table.querySelector("tbody").replaceChildren(...rows);
    table.hidden = rows.length === 0;
  }
}

// A queued command (202): its status is shown and re-read every TRACK_MS until it is final;
// a command.completed stream event for it ends the wait at once.
function trackCommand(cid, status) {
  stopTracking();
  const t = { id: cid, device: state.device, trail: [], timer: null, done: false };
  state.track = t;
  $("#cmd-track-id").textContent = cid;
  $("#cmd-track").hidden = false;
  noteTrack(t, status);
  if (!t.done) t.timer = setInterval(() => { if (!document.hidden) quiet(pollTrack(t)); }, TRACK_MS);
}

function stopTracking() {
  const t = state.track;
  if (t) {
    t.done = true;
    clearInterval(t.timer);
  }
  state.track = null;
}

async function pollTrack(t) {
  const { status, body } = await api(`/api/commands/${encodeURIComponent(t.id)}`);
  if (t.done || state.track !== t) return;
  if (status === 200 && body && typeof body.status === "string") {
    noteTrack(t, body.status, body);
  } else {
    $("#cmd-track-trail").textContent = "status unavailable: " + errorText(body, status);
  }
}

// Shows status `s` of the tracked command (and `record`, the stored record or the event's
// data, once it is final).
function noteTrack(t, s, record) {
  if (t.done || state.track !== t) return;
  if (t.trail[t.trail.length - 1] !== s) t.trail.push(s);
  const final = FINAL.includes(s);
  const shown = $("#cmd-track-status");
  shown.textContent = s;
  shown.className = s === "ok" ? "ok" : final ? "error" : "";
  $("#cmd-track-trail").textContent = t.trail.length > 1 ? t.trail.join(" → ") : "";
  if (final) {
    t.done = true;
    clearInterval(t.timer);
    if (record && typeof record === "object") $("#cmd-result").textContent = JSON.stringify(record, null, 2);
    const st = $("#cmd-status");
    st.className = s === "ok" ? "ok" : "error";
    st.textContent = `queued command ${s}` + (record && record.error ? ": " + record.error : "");
  }
}

// ---------- webhooks (admin; the tab shows only when /api/webhooks answers) ----------

function listText(v, none) {
  if (Array.isArray(v)) return v.length ? v.map(String).join(", ") : none;
  return v == null || v === "" ? none : String(v);
}

function words(sel) {
  return $(sel).value.split(/[\s,;]+/).filter(Boolean);
}

function button(text, cls, onClick) {
  const b = el("button", text, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function webhookRow(h) {
  const wid = String(h.id);
  const tr = el("tr");
  tr.dataset.id = wid;
  cell(tr, wid);
  cell(tr, h.url, "url");
  cell(tr, listText(h.events, ""));
  cell(tr, listText(h.devices, "all"));
  cell(tr, h.source);
  cell(tr, h.has_secret ? "yes" : "no");
  cell(tr, h.paused ? "paused" : "active", h.paused ? "error" : "ok");
  cell(tr, formatValue(h.delivered), "num");
  cell(tr, formatValue(h.failed), "num");
  cell(tr, formatValue(h.dropped), "num");
  cell(tr, when(h.created_at));
  const td = el("td", null, "actions");
  td.append(button("deliveries", "deliveries", () => quiet(showDeliveries(wid))), " ",
    button("send test", "test", () => quiet(testWebhook(wid))));
  if (h.source !== "settings") {
    // Two clicks: the first arms the button, the second deletes.
    const del = button("delete", "delete", () => {
      if (del.dataset.armed !== "1") {
        del.dataset.armed = "1";
        del.textContent = "really delete?";
        return;
      }
      quiet(deleteWebhook(wid));
    });
    td.append(" ", del);
  }
  tr.appendChild(td);
  return tr;
}

async function refreshWebhooks() {
  const { status, body } = await api("/api/webhooks");
  if (status !== 200) {
    $("#webhooks-error").textContent = status === 404
      ? "This server has no webhook API."
      : "Webhooks unavailable: " + errorText(body, status);
    $("#webhook-table tbody").replaceChildren();
    return;
  }
  $("#webhooks-error").textContent = "";
  const list = Array.isArray(body) ? body.filter((h) => h && typeof h === "object" && h.id != null) : [];
  $("#webhook-table tbody").replaceChildren(...list.map(webhookRow));
  $("#no-webhooks").hidden = list.length > 0;
}

async function showDeliveries(wid) {
  state.deliveriesOf = wid;
  const { status, body } = await api(`/api/webhooks/${encodeURIComponent(wid)}/deliveries?limit=100`);
  if (state.deliveriesOf !== wid) return;
  $("#deliveries-title").hidden = false;
  $("#deliveries-title").textContent = "Deliveries of webhook " + wid + " (newest first)";
  if (status !== 200) {
    $("#webhooks-error").textContent = "Deliveries unavailable: " + errorText(body, status);
    return;
  }
  const rows = (Array.isArray(body) ? body : []).map((d) => {
    const tr = el("tr", null, d.outcome === "ok" ? "ok" : "error");
    cell(tr, when(d.at));
    cell(tr, d.event);
    cell(tr, d.delivery, "hex");
    cell(tr, formatValue(d.events), "num");
    cell(tr, formatValue(d.attempt), "num");
    cell(tr, d.outcome, "outcome");
    cell(tr, [d.status_code != null ? String(d.status_code) : "", d.error || ""].filter(Boolean).join(" "), "code");
    cell(tr, d.latency_ms != null ? formatValue(d.latency_ms) + " ms" : "", "num");
    return tr;
  });
  $("#delivery-table tbody").replaceChildren(...rows);
  $("#delivery-table").hidden = rows.length === 0;
  $("#no-deliveries").hidden = rows.length > 0;
  return Array.isArray(body) ? body : [];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function testWebhook(wid) {
  const note = $("#webhooks-note");
  note.className = "";
  note.textContent = "sending a test to " + wid + "…";
  const { status, body } = await api(`/api/webhooks/${encodeURIComponent(wid)}/test`, { method: "POST" });
  if (status === 200 && body && typeof body === "object") {
    const how = [body.status_code != null ? "HTTP " + body.status_code : "", body.error || "",
      body.latency_ms != null ? "in " + body.latency_ms + " ms" : ""].filter(Boolean).join(", ");
    note.className = body.ok ? "ok" : "error";
    note.textContent = `Test of ${wid}: ${body.ok ? "delivered" : "failed"} (${how})`;
  } else {
    note.className = "error";
    note.textContent = "Test failed: " + errorText(body, status);
  }
  // The attempt is written to the delivery log just after it is answered: re-read the log
  // (for up to ~10 s) until it lists this delivery.
  const delivery = body && typeof body === "object" ? body.delivery : null;
  for (let i = 0; i < 10; i++) {
    const rows = await showDeliveries(wid);
    if (state.deliveriesOf !== wid || state.view !== "webhooks") break;
    if (!delivery || (rows || []).some((d) => d && d.delivery === delivery)) break;
    await sleep(1000);
  }
  await refreshWebhooks();
}

async function addWebhook() {
  const note = $("#webhooks-note");
  const url = $("#wh-url").value.trim();
  const events = words("#wh-events");
  const devices = words("#wh-devices");
  const secret = $("#wh-secret").value;
  const body = { url, events: events.length ? events : ["*"] };
  if (devices.length) body.devices = devices;
  if (secret) body.secret = secret;
  $("#wh-add").disabled = true;
  let res;
  try {
    res = await api("/api/webhooks", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } finally {
    $("#wh-add").disabled = false;
  }
  if (res.status === 201 || res.status === 200) {
    note.className = "ok";
    note.textContent = "Added webhook " + String(res.body && res.body.id) + ".";
    $("#wh-url").value = "";
    $("#wh-secret").value = "";
  } else {
    note.className = "error";
    note.textContent = `Not added: ${res.status} ${errorText(res.body, res.status)}`;
  }
  await refreshWebhooks();
}

async function deleteWebhook(wid) {
  const note = $("#webhooks-note");
  const { status, body } = await api(`/api/webhooks/${encodeURIComponent(wid)}`, { method: "DELETE" });
  if (status === 200) {
    note.className = "ok";
    note.textContent = "Deleted webhook " + wid + ".";
    if (state.deliveriesOf === wid) {
      state.deliveriesOf = null;
      $("#deliveries-title").hidden = true;
      $("#delivery-table").hidden = true;
      $("#no-deliveries").hidden = true;
    }
  } else {
    note.className = "error";
    note.textContent = `Not deleted: ${status} ${errorText(body, status)}`;
  }
  await refreshWebhooks();
}

// ---------- wiring ----------

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("#login-error").textContent = "";
  quiet(login($("#token").value.trim()));
});
$("#logout").addEventListener("click", () => logout("Logged out."));
$("#filter").addEventListener("input", () => filterChanged(FILTER_MS));
$("#online-only").addEventListener("change", () => filterChanged(0));
$("#prev-devices").addEventListener("click", () => turnPage(false));
$("#next-devices").addEventListener("click", () => turnPage(true));
$("#chart-point").addEventListener("change", () => quiet(refreshChart()));
$("#chart-range").addEventListener("change", () => quiet(refreshChart()));
$("#cmd-type").addEventListener("change", showCommandFields);
$("#command-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  quiet(sendCommand());
});
$("#lock-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  quiet(lockAction(true));
});
$("#lock-release").addEventListener("click", () => quiet(lockAction(false)));
$("#webhook-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  quiet(addWebhook());
});
window.addEventListener("hashchange", () => { if (state.token) route(); });
// A hidden tab stops polling; when it shows again, catch up at once.
document.addEventListener("visibilitychange", () => {
  if (document.hidden || !state.token) return;
  if (state.view === "devices") quiet(refreshDevices());
  if (state.view === "device") quiet(refreshDevice());
});
// "last seen … ago" ages even when nothing arrives.
setInterval(() => { if (state.view === "devices") renderDevices(); }, 10000);

showCommandFields();
if (state.token) {
  show(location.hash.startsWith("#/device/") ? "device" : "devices");
  quiet(refreshDevices().then(enter));
} else {
  show("login");
}
