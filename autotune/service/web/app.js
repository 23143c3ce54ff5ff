// autotune's web page: the studies list, the submit form and one study, rendered from the JSON API (/api/v1).
// Every string that comes from the server is put in the page as text (textContent, attribute values through
// setAttribute), never parsed as HTML; the study's report is shown in a sandboxed srcdoc frame (scripts only,
// no same-origin access, so its scripts cannot read this page or the token).
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "autotune.token";
const ACTIVE = new Set(["queued", "running"]);
// The studies list is polled, not streamed: a browser opens at most 6 HTTP/1.1 connections to a host, so one
// event stream per running study would starve the page's other requests. Polls are bounded in count.
const POLL = { activeMs: 2000, idleMs: 15000, limit: 1800 };
const STATE_POLL = { ms: 2000, limit: 3600 }; // the study page's fallback when its event stream breaks
const COUNT_KEYS = ["ok", "infeasible", "unsupported", "failed"];
const FRAMEWORKS = () => document.body.dataset.frameworks.split(" ").filter(Boolean);

class ApiError extends Error {
  constructor(status, detail) {
    super(detail && detail.message ? detail.message : `HTTP ${status}`);
    this.status = status;
    this.field = detail ? detail.field : null;
  }
}

// ---- DOM helpers: children are nodes or strings (strings become text nodes) ----
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows, props = {}) {
  return el("table", props, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

const fmt = {
  num: (v, digits = 0) => (v === null || v === undefined ? "-" : Number(v).toLocaleString("en-US",
    { minimumFractionDigits: digits, maximumFractionDigits: digits })),
  pct: (v) => (v === null || v === undefined ? "-" : `${(100 * v).toFixed(1)} %`),
  time: (v) => {
    if (!v) return "-";
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? String(v) : d.toLocaleString();
  },
};

// The compact layout line of autotune/results/render.py layout_summary (the CLI's `best` output).
function layoutSummary(cfg) {
  if (!cfg || cfg.dp === undefined) return Object.entries(cfg || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  const parts = [`tp=${cfg.tp}`, `pp=${cfg.pp}`, `dp=${cfg.dp}`];
  if ((cfg.cp ?? 1) > 1) parts.push(`cp=${cfg.cp}`);
  if ((cfg.vpp ?? 1) > 1) parts.push(`vpp=${cfg.vpp}`);
  if (cfg.sequence_parallel) parts.push("sp");
  parts.push(`zero=${cfg.zero}`);
  if (cfg.zero && cfg.dp_shard !== cfg.dp) parts.push(`dp_shard=${cfg.dp_shard}`);
  parts.push(`mbs=${cfg.micro_batch}`, `ga=${cfg.grad_accum}`, `recompute=${cfg.recompute}`);
  if (cfg.recompute_layers) parts.push(`(${cfg.recompute_layers} layers)`);
  if (cfg.nodes !== undefined) parts.push(`nodes=${cfg.nodes}`);
  return parts.join(" ");
}

// ---- API access: the token (sessionStorage, this tab only) goes with every request ----
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const res = await fetch(API + path, Object.assign({}, options, { headers }));
  if (!res.ok) {
    let detail = null;
    try {
      const body = await res.json();
      detail = typeof body.detail === "object" && body.detail !== null ? body.detail
        : { field: null, message: String(body.detail) };
    } catch (e) {
      detail = { field: null, message: `HTTP ${res.status} ${res.statusText}` };
    }
    if (res.status === 401) detail.message = `${detail.message} (enter an API token at the top of the page: see the note there for where to find it)`;
    throw new ApiError(res.status, detail);
  }
  return res;
}

const getJSON = async (path) => (await api(path)).json();

function notice(message) {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.hidden = !message;
}

function report(error) {
  notice(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Server-sent events read through fetch (an EventSource cannot send the Authorization header).
async function streamEvents(path, onEvent) {
  const res = await api(path, { headers: { Accept: "text/event-stream" } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

// ---- progress of one study: state badge, bar, counts ----
function stateBadge(state) { return el("span", { class: `badge state-${state}`, text: state }); }

function progressCell(s) {
  const bar = el("progress", { max: s.budget || null, value: s.budget ? s.done : null });
  const label = s.budget ? `${fmt.num(s.done)} / ${fmt.num(s.budget)}` : fmt.num(s.done);
  return el("span", { class: "progress" }, bar, el("span", { class: "progress-label", text: label }));
}

function countsText(counts) {
  return COUNT_KEYS.map((k) => `${k} ${fmt.num((counts || {})[k] || 0)}`).join(" · ");
}

// ---- view: the studies list ----
function studyRow(s, highlight) {
  return el("tr", { dataset: { name: s.name, state: s.state }, class: s.name === highlight ? "new" : null },
    el("td", {}, el("a", { href: `/studies/${encodeURIComponent(s.name)}`, text: s.name })),
    el("td", {}, stateBadge(s.state)),
    el("td", { text: s.evaluator ?? "-" }),
    el("td", {}, progressCell(s)),
    COUNT_KEYS.map((k) => el("td", { class: "num", text: fmt.num((s.counts || {})[k] || 0) })),
    el("td", { class: "num", text: s.best_step_time_s === null ? "-" : fmt.num(s.best_step_time_s, 3) }),
    el("td", { text: fmt.time(s.started_at) }),
    el("td", { text: fmt.time(s.finished_at) }),
    el("td", { class: "error-text", text: s.error || "" }));
}

async function listView(view) {
  const highlight = new URLSearchParams(location.search).get("submitted");
  const body = el("tbody");
  const status = el("p", { class: "muted", id: "list-status" });
  view.append(el("h1", { text: "Studies" }), status,
    el("table", { id: "studies" }, el("thead", {}, el("tr", {}, ["study", "state", "evaluator", "progress",
      ...COUNT_KEYS, "best step s", "started", "finished", "error"].map((h) => el("th", { text: h })))), body));
  for (let poll = 0; poll < POLL.limit; poll++) {
    let active = false;
    try {
      const { studies } = await getJSON("/studies");
      body.replaceChildren(...studies.map((s) => studyRow(s, highlight)));
      active = studies.some((s) => ACTIVE.has(s.state));
      status.textContent = studies.length ? `${studies.length} studies${active ? " · live" : ""}`
        : "No studies yet: submit one.";
      notice("");
    } catch (e) {
      report(e);
    }
    await sleep(active ? POLL.activeMs : POLL.idleMs);
  }
  status.textContent = "Live updates stopped after the poll limit: reload the page to resume them.";
}

// ---- view: the submit form ----
// The line of a dotted field path (``training.global_batch.0``) in a YAML (or JSON) text: each key, bare or
// quoted, is looked for after the line of its parent, as a block key or inside a flow mapping; list indices
// are skipped.
function fieldLine(text, field) {
  const lines = text.split("\n");
  let at = -1;
  for (const key of (field || "").split(".")) {
    if (/^\d+$/.test(key)) continue;
    const pattern = new RegExp(`(^|[\\s{,])(["']?)${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\2\\s*:`);
    const found = lines.findIndex((line, i) => i > at && pattern.test(line.replace(/#.*$/, "")));
    if (found < 0) break;
    at = found;
  }
  return at;
}

function selectLine(area, line) {
  const lines = area.value.split("\n");
  const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + lines[line].length);
  area.scrollTop = Math.max(0, (line - 3) * parseFloat(getComputedStyle(area).lineHeight || "18"));
}

async function submitView(view) {
  const spec = el("textarea", { id: "spec", name: "spec", rows: 22, spellcheck: "false",
    placeholder: "Paste a study spec (YAML or JSON), or start from an example above." });
  const error = el("p", { id: "spec-error", class: "field-error", role: "alert", hidden: true });
  const examples = el("select", { id: "example" }, el("option", { value: "", text: "— paste your own —" }));
  const describe = el("p", { class: "muted", id: "example-description" });
  const resume = el("input", { type: "checkbox", id: "resume" });
  const button = el("button", { type: "submit", id: "submit-button", text: "Submit study" });

  function showError(e) {
    const line = e.field ? fieldLine(spec.value, e.field) : -1;
    const prefix = `${e.field}: `;
    const message = e.field && e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
    error.replaceChildren(e.field ? el("code", { class: "field-path", text: e.field }) : "",
      e.field ? ": " : "", message, line >= 0 ? el("span", { class: "muted", text: ` (line ${line + 1})` }) : "");
    error.dataset.field = e.field || "";
    error.hidden = false;
    spec.setAttribute("aria-invalid", "true");
    if (line >= 0) selectLine(spec, line);
  }

  function clearError() {
    error.hidden = true;
    error.replaceChildren();
    spec.removeAttribute("aria-invalid");
  }

  examples.addEventListener("change", async () => {
    clearError();
    const choice = examples.selectedOptions[0];
    describe.textContent = choice.dataset.description || "";
    if (!examples.value) return;
    try {
      spec.value = await (await api(`/examples/${encodeURIComponent(examples.value)}`)).text();
    } catch (e) {
      report(e);
    }
  });

  const form = el("form", { id: "submit-form" },
    el("label", { for: "example", text: "Start from an example " }), examples, describe,
    el("label", { for: "spec", class: "block", text: "Study spec" }), spec, error,
    el("p", {}, el("label", {}, resume, " resume a stored study of this name (?resume=true)")),
    el("p", {}, button));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    notice("");
    if (!spec.value.trim()) {
      showError({ field: null, message: "spec: paste a study spec or choose an example" });
      return;
    }
    button.disabled = true;
    try {
      const res = await api(`/studies${resume.checked ? "?resume=true" : ""}`,
        { method: "POST", headers: { "Content-Type": "application/yaml" }, body: spec.value });
      const state = await res.json();
      location.assign(`/?submitted=${encodeURIComponent(state.name)}`);
    } catch (e) {
      if (e instanceof ApiError) showError(e);
      else report(e);
    } finally {
      button.disabled = false;
    }
  });
  spec.addEventListener("input", clearError);
  view.append(el("h1", { text: "Submit a study" }),
    el("p", { class: "muted", text: "The spec is checked as `autotune submit` checks it; an error names its field." }),
    form);
  try {
    const { examples: shipped } = await getJSON("/examples");
    examples.append(...shipped.map((x) => el("option", { value: x.name, text: x.name,
      dataset: { description: x.description || "" } })));
  } catch (e) {
    report(e);
  }
}

// ---- view: one study ----
function breakdown(title, parts, unit, digits, total) {
  const entries = Object.entries(parts || {}).filter(([k]) => k !== "total");
  const sum = total ?? entries.reduce((n, [, v]) => n + v, 0);
  const rows = entries.map(([k, v]) => [k, fmt.num(v, digits),
    el("span", { class: "bar" }, el("span", { class: "fill", style: `width:${sum ? (100 * v) / sum : 0}%` }),
      sum ? `${Math.round((100 * v) / sum)} %` : "-")]);
  rows.push([el("strong", { text: "total" }), el("strong", { text: fmt.num(sum, digits) }), ""]);
  return el("div", { class: "breakdown" }, el("h3", { text: title }), table(["part", unit, "share"], rows));
}

function metricsList(best) {
  const m = best.metrics;
  const items = [
    ["step time", `${fmt.num(m.step_time_s, 3)} s`], ["tokens/s", fmt.num(m.tokens_per_s)],
    ["MFU", fmt.pct(m.mfu)], ["HFU", fmt.pct(m.hfu)], ["TFLOP/s per GPU", fmt.num(m.tflops_per_gpu, 1)],
    ["memory (worst rank)", `${fmt.num(m.memory_gib && m.memory_gib.total, 1)} GiB`], ["GPUs", fmt.num(m.gpus)],
    ["training days (ideal)", m.training_days === undefined ? null : fmt.num(m.training_days, 2)],
    ["expected days (failures)", m.expected_training_days === undefined ? null : fmt.num(m.expected_training_days, 2)],
    ["goodput", m.goodput === undefined ? null : fmt.pct(m.goodput)],
    ["GPU-hours", m.gpu_hours === undefined ? null : fmt.num(m.gpu_hours)],
    ["memory from", best.memory_fidelity || "-"], ["time from", best.time_fidelity || "-"],
    ["trial", String(best.trial)],
  ].filter(([, v]) => v !== null);
  return el("dl", { class: "metrics" }, items.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

function bestSection(best) {
  const section = el("section", { id: "best" }, el("h2", { text: "Best layout" }));
  if (!best.config) {
    section.append(el("p", { class: "error-text", text: `No layout of ${best.study} fits.` }));
    return section;
  }
  section.append(
    el("div", { class: "card" },
      el("p", { class: "layout", id: "best-layout", text: layoutSummary(best.config) }),
      metricsList(best),
      best.estimate_command ? el("div", {}, el("span", { class: "muted", text: "reproduce: " }),
        el("code", { class: "command", id: "estimate-command", text: best.estimate_command })) : null),
    el("details", {}, el("summary", { text: "every layout field" }),
      table(["field", "value"], Object.entries(best.config).map(([k, v]) => [k, v === null ? "-" : String(v)]),
        { id: "best-config" })),
    el("div", { class: "breakdowns" },
      breakdown("Memory per rank (worst rank)", best.metrics.memory_gib, "GiB", 2,
        best.metrics.memory_gib ? best.metrics.memory_gib.total : null),
      best.metrics.time_breakdown_s ? breakdown("Step time", best.metrics.time_breakdown_s, "s", 4,
        best.metrics.step_time_s) : null));
  return section;
}

function runnersUp(best) {
  if (!best.runners_up || !best.runners_up.length) return null;
  return el("section", { id: "runners-up" }, el("h2", { text: "Runners-up and why they lost" }),
    table(["trial", "layout", "tokens/s", "step s", "GiB", "lost by"], best.runners_up.map((r) => [
      String(r.trial), layoutSummary(r.config), fmt.num(r.metrics.tokens_per_s), fmt.num(r.metrics.step_time_s, 3),
      fmt.num(r.metrics.memory_gib && r.metrics.memory_gib.total, 1), r.lost_by])));
}

function byBatch(best) {
  if (!best.by_global_batch) return null;
  return el("section", { id: "by-global-batch" }, el("h2", { text: "Best layout per global batch size" }),
    table(["global batch", "trial", "layout", "tokens/s", "step s"], Object.entries(best.by_global_batch).map(
      ([b, r]) => [b, String(r.trial), layoutSummary(r.config), fmt.num(r.metrics.tokens_per_s),
        fmt.num(r.metrics.step_time_s, 3)])));
}

function rejected(best) {
  const inf = best.infeasible;
  if (!inf || !inf.count) return null;
  return el("section", { id: "rejected" }, el("h2", { text: `Rejected layouts: ${fmt.num(inf.count)}` }),
    table(["count", "reason"], Object.entries(inf.reasons).slice(0, 10).map(([reason, n]) => [fmt.num(n), reason])));
}

function exportsSection(name) {
  const output = el("pre", { id: "export-output", hidden: true });
  const refused = el("p", { id: "export-error", class: "field-error", hidden: true });
  const link = el("a", { id: "export-download", hidden: true, text: "download" });
  const buttons = FRAMEWORKS().map((fw) => el("button", { type: "button", dataset: { framework: fw }, text: fw,
    onclick: async () => {
      output.hidden = link.hidden = refused.hidden = true;
      output.dataset.framework = refused.dataset.framework = fw;
      try {
        const res = await api(`/studies/${encodeURIComponent(name)}/export/${fw}`);
        const json = (res.headers.get("Content-Type") || "").includes("json");
        const text = json ? JSON.stringify(await res.json(), null, 2) : await res.text();
        output.textContent = text;
        output.hidden = false;
        if (link.href) URL.revokeObjectURL(link.href);
        link.href = URL.createObjectURL(new Blob([text], { type: json ? "application/json" : "text/plain" }));
        link.download = `${name}-${fw}.${json ? "json" : "sh"}`;
        link.textContent = `download ${link.download}`;
        link.hidden = false;
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        refused.textContent = e.message; // e.g. a layout the framework cannot run, named by the exporter
        refused.hidden = false;
      }
    } }));
  return el("section", { id: "exports" }, el("h2", { text: "Export the best layout" }),
    el("p", { class: "buttons" }, buttons, link), refused, output);
}

async function reportSection(name, section) {
  const frame = el("iframe", { id: "report", title: `report of ${name}`, sandbox: "allow-scripts allow-downloads" });
  section.append(el("h2", { text: "Report" }), frame);
  frame.srcdoc = await (await api(`/studies/${encodeURIComponent(name)}/report`)).text();
}

async function results(name, into) {
  into.replaceChildren();
  try {
    const best = await getJSON(`/studies/${encodeURIComponent(name)}/best`);
    into.append(bestSection(best), runnersUp(best) || "", byBatch(best) || "", rejected(best) || "",
      best.config ? exportsSection(name) : "");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
    into.append(el("section", { id: "best" }, el("h2", { text: "Best layout" }),
      el("p", { class: "error-text", text: e.message })));
  }
  const section = el("section", { id: "report-section" });
  into.append(section);
  await reportSection(name, section);
}

function studyHeader(s, onCancel) {
  return el("div", { class: "study-state", id: "study-state", dataset: { state: s.state } },
    stateBadge(s.state), progressCell(s), el("span", { class: "counts", text: countsText(s.counts) }),
    el("span", { class: "muted", text: ` evaluator ${s.evaluator ?? "-"} · started ${fmt.time(s.started_at)}` +
      (s.finished_at ? ` · finished ${fmt.time(s.finished_at)}` : "") }),
    s.error ? el("span", { class: "error-text", text: s.error }) : "",
    ACTIVE.has(s.state) ? el("button", { type: "button", id: "cancel", text: "Cancel", onclick: onCancel }) : "");
}

async function studyView(view, name) {
  const header = el("div");
  const body = el("div", { id: "results" });
  view.append(el("h1", {}, el("a", { href: "/", text: "Studies" }), " / ", el("span", { id: "study-name", text: name })),
    header, body);
  let state = null;
  const show = (s) => {
    state = s;
    header.replaceChildren(studyHeader(s, async () => {
      try {
        show(await (await api(`/studies/${encodeURIComponent(name)}/cancel`, { method: "POST" })).json());
      } catch (e) {
        report(e);
      }
    }));
  };
  try {
    show(await getJSON(`/studies/${encodeURIComponent(name)}`));
    if (ACTIVE.has(state.state)) {
      body.replaceChildren(el("p", { class: "muted", text: "Results appear here when the study ends." }));
      try {
        await streamEvents(`/studies/${encodeURIComponent(name)}/events`, (event, data) => {
          if (event === "progress") show(JSON.parse(data));
        });
      } catch (e) {
        report(e);
      }
      for (let poll = 0; poll < STATE_POLL.limit; poll++) {
        show(await getJSON(`/studies/${encodeURIComponent(name)}`));
        if (!ACTIVE.has(state.state)) break;
        await sleep(STATE_POLL.ms);
      }
    }
    await results(name, body);
  } catch (e) {
    report(e);
  }
}

// ---- start: the token form and the view the path names ----
function setupToken() {
  const input = document.getElementById("token");
  const stateText = document.getElementById("token-state");
  const refresh = () => { stateText.textContent = token() ? "token set for this tab" : "no token"; };
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = "";
    refresh();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  refresh();
}

function route() {
  const view = document.getElementById("view");
  document.getElementById("version").textContent = document.body.dataset.version;
  const path = location.pathname;
  const study = path.match(/^\/studies\/([^/]+)\/?$/);
  if (study) {
    const name = decodeURIComponent(study[1]);
    document.title = `${name} · autotune`;
    return studyView(view, name);
  }
  if (path === "/submit") {
    document.getElementById("nav-submit").classList.add("current");
    return submitView(view);
  }
  document.getElementById("nav-studies").classList.add("current");
  return listView(view);
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  route();
});
