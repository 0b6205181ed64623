// homelab dashboard: reads /api/state once, then follows /api/events (SSE over fetch, so the
// API key can travel in a header; EventSource cannot send one). Data is only ever put in the
// page as text, never as HTML. The stream carries the logs the Logs panel shows and no others
// (?logs=): backends write lines per request, and a page that does not show them should not
// make the server send them.
const $ = (id) => document.getElementById(id);
const KEY = "homelab-api-key";
const MAX_LOG_LINES = 3000;
const S = { models: [], selection: { active: null, selectors: [], profiles: [] }, vram: null, swaps: new Map(), requests: [], logs: [], target: "", deploy: null };
let stream = null; // the open event stream's AbortController

function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the page's CSP, a style attribute is not
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid);
  return el;
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function askKey() {
  return new Promise((resolve) => {
    const dialog = $("keydialog");
    $("keyform").onsubmit = () => { sessionStorage.setItem(KEY, $("keyinput").value.trim()); resolve(); };
    if (!dialog.open) dialog.showModal();
  });
}

async function api(path, opts = {}) {
  for (;;) {
    const resp = await fetch(path, { ...opts, headers: headers(opts.headers) });
    if (resp.status !== 401) return resp;
    sessionStorage.removeItem(KEY);
    await askKey();
  }
}

const secs = (x) => (x >= 100 ? `${Math.round(x)}s` : `${x.toFixed(1)}s`);
const clock = (t) => new Date(t * 1000).toLocaleTimeString();
const stamp = (models) => { const now = performance.now(); for (const m of models) m.at = now; return models; };

// ---------------------------------------------------------------- models
function detail(m) {
  const passed = (performance.now() - m.at) / 1000;
  switch (m.status) {
    case "loading": return m.elapsed == null ? "loading" : `loading for ${secs(m.elapsed + passed)}`;
    case "busy": return `${m.inflight} in flight` + (m.queued ? `, ${m.queued} queued` : "");
    case "ready":
      if (m.ttl_left != null) return `unloads in ${secs(Math.max(0, m.ttl_left - passed))} (ttl ${m.ttl}s)`;
      return m.queued ? `${m.queued} queued` : "idle";
    case "backoff": return `retry in ${secs(Math.max(0, m.retry_in - passed))}: ${m.last_error}`;
    case "failed": return m.last_error;
    default: return m.peerID ? `on peer ${m.peerID}` : (m.queued ? `${m.queued} queued` : "");
  }
}

function renderModels() {
  const rows = S.models.map((m) => {
    const local = !m.peerID;
    const tail = m.log_tail ? h("details", {}, h("summary", {}, "last log lines"), h("pre", {}, m.log_tail)) : null;
    return h("tr", { "data-model": m.id, tabindex: 0, onmouseenter: () => preview(m.id), onfocus: () => preview(m.id) },
      h("th", { scope: "row" }, m.name !== m.id ? h("span", {}, m.id, h("small", {}, ` ${m.name}`)) : m.id),
      h("td", {}, h("span", { class: `badge ${m.status.replace(" ", "-")}`, "data-state": m.status }, m.status)),
      h("td", { class: "detail" }, detail(m), tail),
      h("td", {}, [...m.aliases.map((a) => h("code", {}, a)), ...m.profiles.map((p) => h("code", { class: "profile", title: "profile (setParamsByID)" }, p))]),
      h("td", {}, local ? [
        h("button", { type: "button", "data-action": "load", "aria-label": `Load ${m.id}`, disabled: m.status !== "unloaded" && m.status !== "failed", onclick: () => act("load", m.id) }, "Load"),
        h("button", { type: "button", "data-action": "unload", "aria-label": `Unload ${m.id}`, disabled: ["unloaded", "failed", "backoff", "stopping"].includes(m.status), onclick: () => act("unload", m.id) }, "Unload"),
      ] : null));
  });
  $("model-rows").replaceChildren(...rows);
  const local = S.models.filter((m) => !m.peerID).map((m) => m.id);
  fill("target", local, "(pick a model, or hover one)");
  fill("playmodel", playNames());
  const logs = $("logsource"), following = logs.value;
  if (logs.options.length === local.length + 2 && local.every((n, i) => logs.options[i + 2].value === n)) return;
  logs.replaceChildren(h("option", { value: "" }, "all"), h("option", { value: "proxy" }, "supervisor"), ...local.map((n) => h("option", { value: n }, n)));
  logs.value = local.includes(following) || following === "" ? following : "proxy";
  if (logs.value !== following) refollow(); // the model it showed is gone (a reload)
}

// a request came or went: counts, busy or ready, TTL left; only these cells change (focus stays)
function liveCounts(counts) {
  const now = performance.now();
  for (const m of S.models) {
    const c = counts[m.id];
    if (!c) continue;
    if (!("ttl_left" in c)) delete m.ttl_left;
    Object.assign(m, c, { at: now });
    const tr = document.querySelector(`#model-rows tr[data-model="${CSS.escape(m.id)}"]`);
    if (!tr) continue;
    const badge = tr.querySelector(".badge");
    if (badge.dataset.state !== m.status) Object.assign(badge, { textContent: m.status, className: `badge ${m.status.replace(" ", "-")}` }).dataset.state = m.status;
    tr.querySelector(".detail").firstChild.textContent = detail(m);
  }
}

function fill(id, names, none) {
  const sel = $(id), keep = sel.value;
  sel.replaceChildren(...(none ? [h("option", { value: "" }, none)] : []), ...names.map((n) => h("option", { value: n }, n)));
  sel.value = names.includes(keep) ? keep : none ? "" : names[0] ?? "";
}

// every name a request may use: models, listed selectors, the active profile's pins
function playNames() {
  const sel = S.selection, active = sel.profiles.find((p) => p.id === sel.active);
  return [...new Set([...S.models.map((m) => m.id), ...sel.selectors.filter((x) => !x.unlisted).map((x) => x.id),
    ...Object.entries(active ? active.pins : {}).filter(([, v]) => v).map(([k]) => k)])];
}

// ---------------------------------------------------------------- selectors and profiles
function renderSelection() {
  const sel = S.selection;
  $("selection").hidden = !sel.selectors.length && !sel.profiles.length;
  $("selector-rows").replaceChildren(...sel.selectors.map((x) => h("tr", { "data-selector": x.id },
    h("th", { scope: "row" }, x.id, x.unlisted ? h("small", {}, " unlisted") : null),
    h("td", {}, x.strategy + (x.spillover != null ? ` (${x.spillover} each)` : "")),
    h("td", {}, x.targets.map((t) => h("code", { class: t === x.picks ? "pick" : null }, t))),
    h("td", { class: "picks" }, x.picks ?? x.error))));
  $("profile-rows").replaceChildren(...sel.profiles.map((p) => h("tr", { "data-profile": p.id, class: p.id === sel.active ? "active" : null },
    h("th", { scope: "row" }, p.id, p.id === sel.active ? " (active)" : "", p.description ? h("small", {}, ` ${p.description}`) : null),
    h("td", {}, Object.entries(p.pins).map(([k, v]) => h("code", {}, `${k} → ${v || "disabled"}`))))));
  fill("profile", sel.profiles.map((p) => p.id), "(none)");
  $("profile").value = sel.active ?? "";
  fill("playmodel", playNames());
}

async function switchProfile() {
  const name = $("profile").value || null;
  const resp = await api("/api/profiles/active", { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }) });
  if (!resp.ok) $("conn").textContent = `profile ${name}: HTTP ${resp.status}`;
}

async function act(action, id) {
  const resp = await api(`/api/models/${action}/${encodeURIComponent(id)}`, { method: "POST" });
  if (!resp.ok) $("conn").textContent = `${action} ${id}: HTTP ${resp.status}`;
}

// ---------------------------------------------------------------- VRAM
function preview(id) { if (!$("target").value) { S.target = id; renderVram(); } }

function renderVram() {
  const v = S.vram, box = $("devices");
  if (!v || !Object.keys(v.devices).length) { box.replaceChildren(h("p", {}, "No VRAM figures: this config has no plan.json beside it, no x-deviceBudgetMiB and no x-vramBudgetMiB.")); return; }
  const byId = new Map(S.models.map((m) => [m.id, m]));
  const target = byId.get(S.target);
  const evict = new Set(target ? target.evicts : []);
  const resident = (m) => m && ["ready", "busy", "loading", "stopping"].includes(m.status);
  const bars = Object.entries(v.devices).map(([dev, d]) => {
    const parts = Object.entries(v.models).filter(([id, per]) => per[dev] && resident(byId.get(id))).map(([id, per]) => [id, per[dev], evict.has(id) ? "evict" : ""]);
    if (target && !resident(target) && v.models[target.id]?.[dev]) parts.push([target.id, v.models[target.id][dev], "incoming"]);
    const sum = (xs) => xs.reduce((a, p) => a + p[1].total, 0);
    const used = sum(parts.filter((p) => p[2] !== "incoming")), after = sum(parts.filter((p) => p[2] !== "evict"));
    const scale = Math.max(1.04 * (d.budget_mib || 0), parts.reduce((a, p) => a + p[1].total, 0), 1); // room to show the budget line
    const pct = (x) => `${(100 * x) / scale}%`;
    const segs = parts.map(([id, t, cls]) => h("div", { class: `seg ${cls}`, style: `width:${pct(t.total)}`, "data-model": id, title: `${id}: ${t.total} MiB (weights ${t.weights ?? "?"}, KV ${t.kv ?? "?"}, compute ${t.compute ?? "?"})` },
      ...["weights", "kv", "compute", "other"].filter((k) => t[k]).map((k) => h("span", { class: `t-${k}`, style: `width:${(100 * t[k]) / t.total}%` })),
      h("em", {}, `${id} ${t.total}`)));
    const budget = d.budget_mib ? h("div", { class: "budget", style: `left:${pct(d.budget_mib)}`, title: `budget ${d.budget_mib} MiB` }) : null;
    return h("figure", { class: "device", "data-device": dev },
      h("figcaption", {}, `${dev}${d.llama_cpp ? ` (${d.llama_cpp})` : ""} · ${d.name} · ${used} MiB in use` + (d.budget_mib ? ` of ${d.budget_mib} MiB budget` : "") + (after !== used ? ` · ${after} MiB after the swap` : "")),
      h("div", { class: "bar", role: "img", "aria-label": `${dev}: ${parts.map((p) => `${p[0]} ${p[1].total} MiB${p[2] ? " (" + p[2] + ")" : ""}`).join(", ") || "empty"}` }, ...segs, budget));
  });
  box.replaceChildren(...bars);
  let note = "";
  if (target) note = target.unfit ? target.unfit : resident(target) ? `${target.id} is already resident.` : target.evicts.length ? `A request for ${target.id} would evict: ${target.evicts.join(", ")}.` : `A request for ${target.id} would evict nothing.`;
  $("evict-note").textContent = note;
}

// ---------------------------------------------------------------- activity
function renderActivity() {
  const items = [...[...S.swaps.values()].map((s) => ({ t: s.began, s })), ...S.requests.map((r) => ({ t: r.timestamp, r }))].sort((a, b) => b.t - a.t).slice(0, 200);
  $("timeline").replaceChildren(...items.map(({ t, s, r }) => s
    ? h("li", { class: `swap ${s.outcome}`, "data-swap": s.id }, h("time", {}, clock(t)), ` swap #${s.id}: load ${s.model}`,
        s.trigger === "load" ? " (load button)" : s.caused_by ? ` for request #${s.caused_by}` : "", s.evicted.length ? `, evicted ${s.evicted.join(", ")}` : "",
        s.outcome === "loading" ? ", loading…" : s.outcome === "ready" ? `, ready in ${secs(s.load_seconds)}` : `, failed after ${secs(s.load_seconds)}: ${s.error}`)
    : h("li", { class: "request", "data-request": r.id }, h("time", {}, clock(t)), ` request #${r.id} → ${r.model}: ${r.status}, ${r.duration_ms} ms`,
        r.output_tokens != null ? `, ${r.output_tokens} tokens` : "", r.tokens_per_second != null ? `, ${r.tokens_per_second} tok/s` : "", r.swap ? ` (waited for swap #${r.swap})` : "")));
  const loads = new Map();
  for (const s of S.swaps.values()) if (s.outcome === "ready") (loads.get(s.model) || loads.set(s.model, []).get(s.model)).push(s.load_seconds);
  $("loadtimes").replaceChildren(...[...loads].map(([m, xs]) => h("tr", {}, h("th", { scope: "row" }, m), h("td", {}, String(xs.length)),
    h("td", {}, secs(xs[xs.length - 1])), h("td", {}, secs(xs.reduce((a, b) => a + b, 0) / xs.length)), h("td", {}, xs.slice(-8).map((x) => x.toFixed(1)).join(" ")))));
}

// ---------------------------------------------------------------- logs
function addLog(d) {
  const src = d.source === "proxy" ? "proxy" : d.model || "upstream";
  for (const line of d.data.split("\n")) if (line) S.logs.push([src, line]);
  if (S.logs.length > MAX_LOG_LINES) S.logs.splice(0, S.logs.length - MAX_LOG_LINES);
  if (!$("logpause").checked) renderLogs();
}

function renderLogs() {
  const src = $("logsource").value, q = $("logsearch").value.toLowerCase();
  const lines = S.logs.filter(([s, l]) => (!src || s === src) && (!q || l.toLowerCase().includes(q))).slice(-500);
  const view = $("logview"), atEnd = view.scrollTop + view.clientHeight >= view.scrollHeight - 4;
  view.textContent = lines.map(([s, l]) => (src ? l : `[${s === "proxy" ? "supervisor" : s}] ${l}`)).join("\n");
  if (atEnd) view.scrollTop = view.scrollHeight;
}

// ---------------------------------------------------------------- deploy
// one pinned file of the lock, as the manifest lists it: role, where, sha256
const pinText = (f) => `${f.role}: ${f.repo ? f.repo + "/" : ""}${f.path}${f.revision ? "@" + f.revision.slice(0, 12) : ""} sha256 ${String(f.sha256).slice(0, 12)}`;
function renderDeploy() {
  const d = S.deploy || {}, m = d.manifest || {}, inputs = m.inputs || {};
  const rows = [["config", d.config], ["generation", d.generation], ["deployed", d.deployed ? new Date(d.deployed * 1000).toLocaleString() : null],
    ["host", m.host], ["runtime", m.runtime], ["llama.cpp build", m.build_number], ["server binary", m.server_binary], ["backend", d.backend || m.llama_cpp?.backend],
    ["llama.cpp ref", m.llama_cpp?.ref], ["llama.cpp commit", m.llama_cpp?.commit], ["patches", inputs.patches && Object.keys(inputs.patches).length ? Object.entries(inputs.patches).map(([k, v]) => `${k} ${v.slice(0, 12)}`).join(", ") : "none"],
    ["lock hash", inputs.lock], ["build key", inputs.build],
    ...Object.entries({ ...(d.model_sources || {}), ...(m.models || {}) }).map(([k, v]) => [`model ${k}`, Array.isArray(v) ? v.map(pinText).join("; ") : typeof v === "string" ? v : JSON.stringify(v)])];
  $("facts").replaceChildren(...rows.filter(([, v]) => v != null && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  if (!d.manifest) $("facts").append(h("dt", {}, "generation files"), h("dd", {}, "none beside the config (not deployed by homelab)"));
}

// ---------------------------------------------------------------- playground
async function play(ev) {
  ev.preventDefault();
  const model = $("playmodel").value, out = $("answer"), stats = $("playstats");
  out.textContent = ""; stats.textContent = "waiting…"; $("send").disabled = true;
  const t0 = performance.now(); let first = 0, chunks = 0, usage = null;
  try {
    const resp = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, stream: true, messages: [{ role: "user", content: $("prompt").value }] }) });
    if (!resp.ok) { stats.textContent = `HTTP ${resp.status}: ${(await resp.text()).slice(0, 300)}`; return; }
    await sse(resp, (data) => {
      if (data === "[DONE]") return;
      const j = JSON.parse(data);
      if (j.error) { stats.textContent = `error: ${j.error.message || j.error}`; return; }
      if (j.usage) usage = j.usage;
      const text = j.choices?.[0]?.delta?.content;
      if (text) { if (!first) first = performance.now(); chunks++; out.textContent += text; }
    });
    const end = performance.now(), n = usage?.completion_tokens ?? chunks;
    const rate = first && end > first ? (n - 1) / ((end - first) / 1000) : 0;
    stats.textContent = `time to first token ${first ? ((first - t0) / 1000).toFixed(2) : "?"}s · ${n} tokens · ${rate.toFixed(1)} tok/s`;
  } finally { $("send").disabled = false; }
}

// ---------------------------------------------------------------- events
async function sse(resp, onData) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) onData(data);
    }
  }
}

function onEvent(raw) {
  const env = JSON.parse(raw), d = JSON.parse(env.data);
  if (env.type === "modelStatus") { S.models = stamp(d); renderModels(); renderVram(); }
  else if (env.type === "selection") { S.selection = d; renderSelection(); }
  else if (env.type === "profileChanged") { S.selection.active = d.active; renderSelection(); }
  else if (env.type === "logData") addLog(d);
  else if (env.type === "metrics") { const seen = new Set(S.requests.map((r) => r.id)); S.requests.push(...d.filter((r) => !seen.has(r.id))); S.requests = S.requests.slice(-200); renderActivity(); }
  else if (env.type === "swap") { S.swaps.set(d.id, d); renderActivity(); }
  else if (env.type === "inflight") { $("conn").dataset.inflight = d.total; liveCounts(d.models || {}); }
}

// the Logs panel's source: "" every log (llama-swap's feed), proxy the supervisor's, or one model's
const logsQuery = () => { const src = $("logsource").value; return src ? `?logs=${encodeURIComponent(src)}` : ""; };
function refollow() { if (stream) stream.abort(); }

async function follow() {
  for (let wait = 1; ; wait = Math.min(wait * 2, 10)) {
    const ctl = stream = new AbortController();
    try {
      const resp = await api(`/api/events${logsQuery()}`, { signal: ctl.signal });
      if (resp.ok) {
        $("conn").textContent = "live"; $("conn").className = "live"; wait = 1;
        S.logs = []; renderLogs();
        await sse(resp, onEvent);
      }
    } catch (err) { /* the server went away, or the Logs panel switched its source */ }
    if (ctl.signal.aborted) { wait = 1; continue; } // reconnect at once, following the new source
    $("conn").textContent = `disconnected, retrying in ${wait}s`; $("conn").className = "down";
    await new Promise((r) => setTimeout(r, wait * 1000));
  }
}

async function start() {
  const resp = await api("/api/state");
  const st = await resp.json();
  Object.assign(S, { models: stamp(st.models), selection: st.selection, vram: st.vram, deploy: st.deploy, requests: st.requests });
  for (const s of st.swaps) S.swaps.set(s.id, s);
  renderModels(); renderSelection(); renderVram(); renderActivity(); renderDeploy();
  $("profile").addEventListener("change", switchProfile);
  $("target").addEventListener("change", (e) => { S.target = e.target.value; renderVram(); });
  for (const id of ["logsource", "logsearch", "logpause"]) for (const ev of ["input", "change"]) $(id).addEventListener(ev, renderLogs);
  $("logsource").addEventListener("change", refollow);
  $("playform").addEventListener("submit", play);
  setInterval(() => { for (const tr of document.querySelectorAll("#model-rows tr")) { const m = S.models.find((x) => x.id === tr.dataset.model); if (m && ["loading", "ready", "backoff"].includes(m.status)) tr.querySelector(".detail").firstChild.textContent = detail(m); } }, 1000);
  follow();
}

start();
