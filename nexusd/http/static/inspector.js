// The nexusd inspector: signs in with a session token or the admin key (kept
// in this module's memory only), lists sessions (admin) and shows one session
// live from its HTTP event stream. The stream is read with fetch, not
// EventSource, because EventSource cannot send the Authorization header and a
// secret must never go in a URL.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const PAGE = 20;
const MAX_TIMELINE = 200;

const state = {
  credential: null, // the Bearer secret: in memory only
  admin: false,
  pages: [null],    // `after` cursors of the pages seen, for Previous
  page: 0,
  next: null,
  view: null,       // the session shown: {id, abort, ...}
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const when = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString() : "");
const json = (value) => JSON.stringify(value);
const setStatus = (text) => { $("status").textContent = text; };

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options, cache: "no-store",
    headers: { Authorization: `Bearer ${state.credential}`, ...(options.headers || {}) },
  });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.error?.message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ------------------------------------------------------------------ sign in

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  state.credential = $("credential").value.trim();
  $("credential").value = "";
  const sessionId = $("session-id").value.trim();
  try {
    if (sessionId) {
      state.admin = false;
      await openSession(sessionId);
    } else {
      await showSessions(0);
      state.admin = true;
    }
    $("signin").hidden = true;
    $("signout").hidden = false;
  } catch (error) {
    state.credential = null;
    $("signin-error").textContent = sessionId ? error.message
      : `${error.message} (a session token needs its session id)`;
  }
}

function signOut() {
  closeSession();
  state.credential = null;
  state.admin = false;
  $("sessions").hidden = $("session").hidden = $("signout").hidden = true;
  $("signin").hidden = false;
  setStatus("signed out");
}

// ---------------------------------------------------------------- sessions

async function showSessions(page) {
  const after = state.pages[page];
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (after) query.set("after", after);
  const body = await api(`/sessions?${query}`);
  state.page = page;
  state.pages[page + 1] = body.after ?? null;
  state.next = body.after ?? null;
  const rows = body.sessions.map((s) => {
    const row = el("tr", { class: "open", tabindex: "0" },
      el("td", {}, el("code", {}, s.session_id)), el("td", {}, when(s.created_at)),
      el("td", {}, when(s.expires_at)), el("td", {}, s.created_channel ?? s.channel ?? ""));
    const open = () => openSession(s.session_id).catch((e) => setStatus(e.message));
    row.addEventListener("click", open);
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    return row;
  });
  $("session-rows").replaceChildren(...rows);
  $("prev-page").disabled = page === 0;
  $("next-page").disabled = !state.next;
  $("session").hidden = true;
  $("sessions").hidden = false;
  setStatus(`admin · ${body.sessions.length} sessions on page ${page + 1}`);
}

// ------------------------------------------------------------ one session

function closeSession() {
  if (state.view) state.view.controller.abort();
  state.view = null;
}

async function openSession(id) {
  closeSession();
  const view = {
    id, controller: new AbortController(), seq: 0, entries: new Map(), context: {},
    presence: new Map(), runs: new Map(), changes: [], summaryTimer: null, retry: 0,
  };
  // The first answer says whether the credential opens the session at all.
  const summary = await api(`/sessions/${encodeURIComponent(id)}/summary`);
  // The context as it stands: the replayed history may hold no context change.
  const current = await api(`/sessions/${encodeURIComponent(id)}?channel=inspector`);
  view.context = current.context || {};
  state.view = view;
  $("sid").textContent = id;
  $("back").hidden = !state.admin;
  $("sessions").hidden = true;
  $("session").hidden = false;
  renderSummary(summary);
  render(view);
  follow(view);
}

// Follows the session's event stream; reconnects after the last `seq` seen.
async function follow(view) {
  const { signal } = view.controller;
  while (!signal.aborted) {
    let ended = false;
    try {
      const headers = { Accept: "text/event-stream", Authorization: `Bearer ${state.credential}` };
      // From seq 0 the first time: the retained history is the timeline.
      if (view.seq > 0) headers["Last-Event-ID"] = String(view.seq);
      const url = `/sessions/${encodeURIComponent(view.id)}/events?channel=inspector` +
        (view.seq > 0 ? "" : "&since=0");
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        const error = new Error(body?.error?.message || `HTTP ${response.status}`);
        if ([401, 403, 404, 410].includes(response.status)) ended = true;
        throw error;
      }
      setStatus(`live · ${view.id}`);
      view.retry = 0;
      for await (const event of events(response.body)) {
        if (signal.aborted) return;
        ended = onEvent(view, event) || ended;
        if (ended) break;
      }
    } catch (error) {
      if (signal.aborted) return;
      setStatus(`${ended ? "ended" : "reconnecting"} · ${error.message}`);
    }
    if (ended) return;
    // Backoff with jitter: 0.25 s doubling to 8 s.
    const delay = Math.min(8000, 250 * 2 ** view.retry++) * (0.5 + Math.random() / 2);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

// Parses a text/event-stream body into {event, id, data} objects.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", id: null, data: "" };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data += text;
        else if (field === "event") event.event = text;
        else if (field === "id") event.id = text;
      }
      if (event.data) yield { ...event, data: JSON.parse(event.data) };
    }
  }
}

// Applies one event to the view; true when the stream has ended for good.
function onEvent(view, { event, data }) {
  switch (event) {
    case "attached":
      view.presence = new Map((data.presence || []).map((p) => [p.connection_id, p]));
      break;
    case "snapshot":
      view.entries = new Map(Object.entries(data.entries));
      view.context = data.context;
      view.seq = data.seq;
      break;
    case "change":
      applyChange(view, data);
      break;
    case "presence":
      if (data.action === "join") view.presence.set(data.connection_id, data);
      else view.presence.delete(data.connection_id);
      break;
    case "expired":
    case "invalidated":
      setStatus(`session ${event}${data.reason ? ` (${data.reason})` : ""}`);
      render(view);
      return true;
    case "lagged":
    case "shutdown":
      break; // the stream ends; follow() resumes from view.seq
    default:
      return false;
  }
  render(view);
  return false;
}

function applyChange(view, change) {
  if (change.seq <= view.seq) return; // replayed twice: already applied
  view.seq = change.seq;
  const { op, value, ts, channel } = change;
  if (op === "set") {
    view.entries.set(change.key, { value, version: change.version, updated_at: ts, channel });
    view.flash = change.key;
  } else if (op === "delete") {
    view.entries.delete(change.key);
  } else if (op === "patch") {
    for (const [key, v] of Object.entries(value.set || {})) {
      view.entries.set(key, { value: v, version: value.versions[key], updated_at: ts, channel });
    }
    for (const key of value.delete || []) view.entries.delete(key);
  } else if (op === "context") {
    view.context = value;
  } else if (op === "switch_complete" && value.success) {
    view.context = { ...view.context, current_channel: value.to_channel };
  } else if (op === "run") {
    const run = view.runs.get(value.run_id) ||
      { run_id: value.run_id, workflow: value.workflow, status: "running", progress: 0 };
    for (const k of ["attempt", "step", "total", "progress", "message", "error", "worker"]) {
      if (k in value) run[k] = value[k];
    }
    if (["completed", "failed", "cancelled"].includes(value.event)) run.status = value.event;
    view.runs.set(value.run_id, run);
  }
  view.changes.push(change);
  if (view.changes.length > MAX_TIMELINE) view.changes.shift();
  scheduleSummary(view);
}

// The analytics are read again at most once a second while changes come.
function scheduleSummary(view) {
  if (view.summaryTimer) return;
  view.summaryTimer = setTimeout(async () => {
    view.summaryTimer = null;
    if (state.view !== view) return;
    try {
      renderSummary(await api(`/sessions/${encodeURIComponent(view.id)}/summary`));
    } catch (error) {
      setStatus(error.message);
    }
  }, 1000);
}

// ------------------------------------------------------------------ render

function render(view) {
  if (state.view !== view) return;
  $("seq").textContent = String(view.seq);
  const keys = [...view.entries.keys()].sort();
  $("entries").replaceChildren(...keys.map((key) => {
    const e = view.entries.get(key);
    const row = el("tr", { "data-key": key, class: key === view.flash ? "flash" : "" },
      el("td", {}, el("code", {}, key)), el("td", { class: "value" }, el("code", {}, json(e.value))),
      el("td", {}, String(e.version)), el("td", {}, e.channel), el("td", {}, when(e.updated_at)));
    return row;
  }));
  view.flash = null;
  $("context").textContent = JSON.stringify(view.context, null, 2);
  $("presence").replaceChildren(...[...view.presence.values()].map((p) =>
    el("li", {}, el("strong", {}, p.channel), ` ${p.client || ""} `, el("small", {}, p.connection_id))));
  $("runs").replaceChildren(...[...view.runs.values()].reverse().map((r) => {
    const bar = el("progress", { max: "1", value: String(r.progress ?? 0) });
    const label = `${r.workflow} · ${r.status}` +
      (r.total ? ` · step ${r.step}/${r.total}` : "") + (r.message ? ` · ${r.message}` : "");
    return el("li", { "data-run": r.run_id }, bar, " ", label);
  }));
  $("timeline").replaceChildren(...view.changes.slice().reverse().map((c) =>
    el("li", { value: String(c.seq) }, `${when(c.ts)} · ${c.channel} · ${c.op}` +
      (c.key !== undefined && c.key !== null ? ` ${c.key}` : "") +
      (c.op === "run" ? ` ${c.value.workflow} ${c.value.event}` : ""))));
  $("timeline-chart").replaceChildren(timelineChart(view.changes));
}

function renderSummary(report) {
  const r = report.report || report;
  $("chart-events").replaceChildren(barChart(r.event_breakdown || {}));
  const byChannel = Object.fromEntries(
    Object.entries(r.channel_activity || {}).map(([c, s]) => [c, s.changes]));
  $("chart-channels").replaceChildren(barChart(byChannel));
  $("summary-line").textContent = `${r.total_events} events · ${r.keys} keys · ` +
    `${r.transitions} channel switches · current channel ${r.current_channel ?? "none"}`;
}

// A horizontal bar chart of {label: number}.
function barChart(values) {
  const items = Object.entries(values).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...items.map(([, v]) => v));
  const row = 18, width = 320, left = 110;
  const chart = svg("svg", { width, height: Math.max(row, items.length * row),
    role: "img", "aria-label": items.map(([k, v]) => `${k} ${v}`).join(", ") || "none" });
  items.forEach(([label, value], i) => {
    const y = i * row;
    chart.append(svg("text", { x: 0, y: y + 13 }, label.slice(0, 16)));
    chart.append(svg("rect", { class: "bar", x: left, y: y + 3, height: row - 6,
      width: Math.max(1, ((width - left - 40) * value) / max) }));
    chart.append(svg("text", { x: left + ((width - left - 40) * value) / max + 4, y: y + 13 },
      String(value)));
  });
  return chart;
}

// One lane per channel, a dot per change, time left to right.
function timelineChart(changes) {
  const channels = [...new Set(changes.map((c) => c.channel))];
  const lane = 20, left = 90, width = 720;
  const chart = svg("svg", { width, height: Math.max(lane, channels.length * lane),
    role: "img", "aria-label": `changes by channel: ${channels.join(", ") || "none"}` });
  if (!changes.length) return chart;
  const t0 = changes[0].ts, t1 = changes[changes.length - 1].ts;
  const x = (ts) => left + ((width - left - 10) * (ts - t0)) / Math.max(1e-3, t1 - t0);
  channels.forEach((channel, i) => {
    const y = i * lane + lane / 2;
    chart.append(svg("line", { class: "lane", x1: left, x2: width, y1: y, y2: y }));
    chart.append(svg("text", { x: 0, y: y + 4 }, channel.slice(0, 12)));
  });
  for (const c of changes) {
    const dot = svg("circle", { class: "bar", cx: x(c.ts), cy: channels.indexOf(c.channel) * lane + lane / 2, r: 4 });
    dot.append(svg("title", {}, `#${c.seq} ${c.op} ${c.key ?? ""}`));
    chart.append(dot);
  }
  return chart;
}

// ------------------------------------------------------------------- wiring

$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
$("prev-page").addEventListener("click", () => showSessions(state.page - 1).catch((e) => setStatus(e.message)));
$("next-page").addEventListener("click", () => showSessions(state.page + 1).catch((e) => setStatus(e.message)));
$("back").addEventListener("click", () => {
  closeSession();
  showSessions(state.page).catch((e) => setStatus(e.message));
});
