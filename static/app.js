// dtu-supervisor console: plain JavaScript, every asset served by the server itself.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { token: sessionStorage.getItem("dtu-token") || "", device: null, timer: null };

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (res.status === 401) { logout("The token was refused."); throw new Error("unauthorized"); }
  return { status: res.status, body };
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function when(t) { return t ? new Date(t).toLocaleString() : ""; }

function show(id) {
  for (const s of ["login", "devices", "device"]) $("#" + s).hidden = s !== id;
  $("#logout").hidden = id === "login";
}

function logout(message) {
  sessionStorage.removeItem("dtu-token");
  state.token = "";
  clearInterval(state.timer);
  $("#login-error").textContent = message || "";
  show("login");
}

async function refreshDevices() {
  const { status, body } = await api("/api/devices");
  if (status !== 200) return;
  const tbody = $("#device-table tbody");
  tbody.replaceChildren();
  let online = 0;
  for (const d of body) {
    if (d.online) online++;
    const tr = document.createElement("tr");
    tr.className = "device";
    tr.dataset.id = d.id;
    cell(tr, d.id);
    cell(tr, d.online ? "online" : "offline", d.online ? "online" : "offline");
    cell(tr, d.protocol);
    cell(tr, d.profile);
    cell(tr, d.remote_addr);
    cell(tr, when(d.last_seen));
    tr.addEventListener("click", () => openDevice(d.id));
    tbody.appendChild(tr);
  }
  $("#summary").textContent = `${online} online of ${body.length}`;
}

function drawChart(rows) {
  const svg = $("#chart");
  svg.replaceChildren();
  if (rows.length < 2) return;
  const pts = rows.slice().reverse();
  const t0 = Date.parse(pts[0].at), t1 = Date.parse(pts[pts.length - 1].at) || t0 + 1;
  const vs = pts.map((r) => r.value);
  const lo = Math.min(...vs), hi = Math.max(...vs);
  const span = hi - lo || 1;
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.map((r) => {
    const x = ((Date.parse(r.at) - t0) / ((t1 - t0) || 1)) * 600;
    const y = 190 - ((r.value - lo) / span) * 180;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(" "));
  svg.appendChild(line);
}

async function refreshDevice() {
  const id = state.device;
  const enc = encodeURIComponent(id);
  const { status, body } = await api(`/api/devices/${enc}`);
  if (status !== 200) { $("#device-facts").textContent = body.error || "unknown device"; return; }
  $("#device-facts").textContent =
    `${body.online ? "online" : "offline"} · ${body.protocol} · profile ${body.profile || "-"} · ${body.remote_addr} · last seen ${when(body.last_seen)}`;
  const tbody = $("#values tbody");
  tbody.replaceChildren();
  const select = $("#chart-point");
  const names = Object.keys(body.values || {});
  for (const name of names) {
    const v = body.values[name];
    const tr = document.createElement("tr");
    cell(tr, name); cell(tr, v.value); cell(tr, v.unit); cell(tr, when(v.at));
    tbody.appendChild(tr);
    if (![...select.options].some((o) => o.value === name)) select.add(new Option(name, name));
  }
  if (select.value) {
    const hist = await api(`/api/devices/${enc}/telemetry?point=${encodeURIComponent(select.value)}&limit=200`);
    if (hist.status === 200) drawChart(hist.body);
  }
  const ev = await api(`/api/events?device=${enc}&limit=20`);
  const etb = $("#events tbody");
  etb.replaceChildren();
  for (const e of ev.status === 200 ? ev.body : []) {
    const tr = document.createElement("tr");
    cell(tr, e.event); cell(tr, when(e.at)); cell(tr, e.detail);
    etb.appendChild(tr);
  }
  const pk = await api(`/api/devices/${enc}/packets?limit=20`);
  const ptb = $("#packets tbody");
  ptb.replaceChildren();
  for (const p of pk.status === 200 ? pk.body : []) {
    const tr = document.createElement("tr");
    cell(tr, p.direction); cell(tr, p.kind); cell(tr, p.hex, "hex"); cell(tr, when(p.at));
    ptb.appendChild(tr);
  }
}

function openDevice(id) {
  state.device = id;
  $("#device-title").textContent = "Device " + id;
  $("#chart-point").replaceChildren();
  $("#cmd-result").textContent = "";
  const enc = encodeURIComponent(id);
  // Downloads cannot carry a header: the token goes in the query for these two links.
  $("#export-csv").href = `/api/export?device=${enc}&format=csv&token=${encodeURIComponent(state.token)}`;
  $("#export-xlsx").href = `/api/export?device=${enc}&format=xlsx&token=${encodeURIComponent(state.token)}`;
  location.hash = "device/" + enc;
  show("device");
  tick();
}

function tick() {
  const run = state.device ? refreshDevice : refreshDevices;
  run().catch((e) => console.warn(e));
}

function startPolling() {
  clearInterval(state.timer);
  state.timer = setInterval(tick, 2000);
  tick();
}

function commandBody() {
  const type = $("#cmd-type").value;
  const a = $("#cmd-a").value.trim(), b = $("#cmd-b").value.trim(), c = $("#cmd-c").value.trim();
  switch (type) {
    case "read": return { type, function: Number(a || 3), start: Number(b), count: Number(c || 1) };
    case "write_register": return { type, address: Number(a), value: Number(b) };
    case "write_coil": return { type, address: Number(a), value: b === "true" || b === "1" };
    case "named": return { type, name: a };
    default: return { type: "raw", hex: a };
  }
}

$("#command-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#cmd-result").textContent = "sending…";
  const { status, body } = await api(`/api/devices/${encodeURIComponent(state.device)}/commands`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(commandBody()),
  });
  $("#cmd-result").textContent = `${status}\n${JSON.stringify(body, null, 2)}`;
});

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.token = $("#token").value;
  const { status, body } = await api("/api/devices").catch(() => ({ status: 0, body: {} }));
  if (status === 200) {
    sessionStorage.setItem("dtu-token", state.token);
    $("#login-error").textContent = "";
    state.device = null;
    show("devices");
    startPolling();
  } else if (status !== 0) {
    $("#login-error").textContent = (body && body.error) || `sign-in failed (${status})`;
  }
});

$("#back").addEventListener("click", (ev) => {
  ev.preventDefault();
  state.device = null;
  location.hash = "";
  show("devices");
  tick();
});
$("#logout").addEventListener("click", () => logout());
$("#chart-point").addEventListener("change", tick);

if (state.token) {
  const m = location.hash.match(/^#device\/(.+)$/);
  if (m) openDevice(decodeURIComponent(m[1])); else show("devices");
  startPolling();
} else {
  show("login");
}
