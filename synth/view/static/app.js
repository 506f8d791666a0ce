// synth view: the page over one run directory. Every number and row comes from /api (queries over
// the run's store); nothing here is fetched from the internet. Text from the rows is always set as
// text (never as HTML).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { run: ".", tab: "rows", stage: "", kept: "", reason: "", capability: "", round: "",
  score: "", min: "", max: "", q: "", offset: 0, pairStage: "", pairOffset: 0, scoreStage: "" };
const PAGE = 50, PAIR_PAGE = 10;
let funnel = [], meta = { kinds: {}, outputs: {} }, funnelTimer = null;

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined) node.append(kid);
  return node;
}
const svgEl = (tag, attrs) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
};
const fmt = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en"));
const num = (x) => (typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(3)) : String(x));

async function api(path, params) {
  const q = new URLSearchParams({ run: state.run, ...(params || {}) });
  for (const [k, v] of [...q.entries()]) if (v === "") q.delete(k);
  const resp = await fetch(`/api/${path}?${q}`);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

// -- URL state (a view can be shared and reloaded) ------------------------------------------
function saveHash() {
  const keep = {};
  for (const [k, v] of Object.entries(state)) if (v !== "" && v !== 0) keep[k] = v;
  history.replaceState(null, "", "#" + new URLSearchParams(keep));
}
function loadHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  for (const k of Object.keys(state)) if (q.has(k)) state[k] = typeof state[k] === "number" ? Number(q.get(k)) : q.get(k);
}

// -- runs and the funnel ----------------------------------------------------------------------
async function loadRuns() {
  const data = await api("runs", {});
  const sel = $("#run");
  sel.replaceChildren(...data.runs.map((r) => el("option", { value: r.run, text: r.run === "." ? data.root : r.run })));
  if (!data.runs.some((r) => r.run === state.run) && data.runs.length) state.run = data.runs[0].run;
  sel.value = state.run;
  $("#rounds-tab").hidden = !data.rounds;
  if (!data.runs.length) $("#runinfo").textContent = `no run under ${data.root}`;
}

async function loadMeta() {
  try {
    meta = await api("meta", {});
    const recipe = meta.recipe ? `recipe ${meta.recipe}` : "";
    $("#runinfo").textContent = [recipe, meta.capability ? `capability ${meta.capability}` : ""].filter(Boolean).join(" · ");
  } catch (e) {
    meta = { kinds: {}, outputs: {} };
    $("#runinfo").textContent = e.message;
  }
}

function stageKinds(stage) {
  return Object.keys((meta.kinds || {})[stage] || {});
}

async function loadFunnel() {
  let data;
  try { data = await api("funnel", {}); } catch (e) { $("#funnel").textContent = e.message; return; }
  funnel = data.funnel || [];
  const badge = $("#live");
  badge.className = "badge " + (data.live ? "live" : "done");
  badge.textContent = data.live ? `running (pid ${data.pid})` : "finished";
  badge.title = data.command || "";
  $("#funnel-updated").textContent = data.updated ? `as of ${new Date(data.updated * 1000).toLocaleTimeString()}` : "";
  renderFunnel();
  fillStageSelects();
  clearTimeout(funnelTimer);
  funnelTimer = setTimeout(loadFunnel, data.live ? 1500 : 5000);  // a run that starts later shows up too
}

function renderFunnel() {
  const max = Math.max(1, ...funnel.map((f) => Math.max(f.rows_in || 0, f.kept + f.rejected)));
  const box = $("#funnel");
  box.replaceChildren(...funnel.map((f) => {
    const w = 300, kw = (w * f.kept) / max, rw = (w * f.rejected) / max;
    const bar = svgEl("svg", { class: "bar", viewBox: `0 0 ${w} 14`, preserveAspectRatio: "none" });
    bar.append(svgEl("rect", { x: 0, y: 1, width: w, height: 12, fill: "#f0f0f0" }));
    bar.append(svgEl("rect", { x: 0, y: 1, width: kw, height: 12, fill: "var(--kept)" }));
    bar.append(svgEl("rect", { x: kw, y: 1, width: rw, height: 12, fill: "var(--rej)" }));
    const reasons = Object.entries(f.reasons || {}).map(([reason, n]) => el("a", {
      class: "reason" + (state.stage === f.stage && state.reason === reason ? " active" : ""),
      "data-stage": f.stage, "data-reason": reason, text: `${reason || "(none)"} ${fmt(n)}`,
      onclick: () => showRows({ stage: f.stage, kept: "rejected", reason }),
    }));
    return el("div", { class: "stage", "data-stage": f.stage },
      el("div", {},
        el("span", { class: "stage-name", text: f.stage, onclick: () => showRows({ stage: f.stage }) }),
        f.done ? null : el("span", { class: "muted small", text: " (running)" })),
      bar,
      el("div", { class: "stage-nums" },
        `in ${fmt(f.rows_in)} · `,
        el("a", { class: "kept-link", text: `kept ${fmt(f.kept)}`, onclick: () => showRows({ stage: f.stage, kept: "kept" }) }),
        " · ",
        el("a", { class: "rej-link", text: `rejected ${fmt(f.rejected)}`, onclick: () => showRows({ stage: f.stage, kept: "rejected" }) })),
      el("div", { class: "reasons" }, reasons));
  }));
}

function fillStageSelects() {
  const stages = funnel.map((f) => f.stage);
  const fill = (sel, list, value) => {
    const now = [...sel.options].map((o) => o.value).join("\n");
    if (now !== list.join("\n")) sel.replaceChildren(...list.map((s) => el("option", { value: s, text: s })));
    if (list.includes(value)) sel.value = value;
  };
  if (!state.stage && stages.length) state.stage = outputStage("sft") || stages[stages.length - 1];
  fill($("#f-stage"), stages, state.stage);
  const pairStages = stages.filter((s) => stageKinds(s).includes("preference"));
  if (!pairStages.includes(state.pairStage)) state.pairStage = pairStages[0] || "";
  fill($("#p-stage"), pairStages, state.pairStage);
  if (!state.scoreStage || !stages.includes(state.scoreStage)) state.scoreStage = state.stage;
  fill($("#s-stage"), stages, state.scoreStage);
}

function outputStage(kind) {
  const out = (meta.outputs || {})[kind];
  const list = Array.isArray(out) ? out : out ? [out] : [];
  return list.length ? list[list.length - 1] : "";
}

// -- rows ---------------------------------------------------------------------------------------
function showRows(filters) {
  Object.assign(state, { kept: "", reason: "", capability: "", round: "", score: "", min: "", max: "", q: "" }, filters, { offset: 0 });
  switchTab("rows");
  renderFunnel();
  loadFacets().then(loadRows);
}

async function loadFacets() {
  if (!state.stage) return;
  const f = await api("facets", { stage: state.stage }).catch(() => null);
  const set = (sel, values, label, value) => {
    sel.replaceChildren(el("option", { value: "", text: label }), ...values.map((v) => el("option", { value: String(v), text: String(v) })));
    sel.value = values.map(String).includes(value) ? value : "";
  };
  if (!f) return;
  set($("#f-reason"), Object.keys(f.reasons), "any", state.reason);
  set($("#f-capability"), f.capabilities, "any", state.capability);
  set($("#f-round"), f.rounds, "any", state.round);
  set($("#f-score"), f.scores, "-", state.score);
  // a reason not (yet) among the facets (a live run): keep it selectable
  if (state.reason && $("#f-reason").value !== state.reason) {
    $("#f-reason").append(el("option", { value: state.reason, text: state.reason }));
    $("#f-reason").value = state.reason;
  }
}

function formToState() {
  for (const k of ["stage", "kept", "reason", "capability", "round", "score", "min", "max", "q"]) state[k] = $(`#f-${k}`).value;
}
function stateToForm() {
  for (const k of ["kept", "min", "max", "q"]) $(`#f-${k}`).value = state[k];
}

async function loadRows() {
  stateToForm();
  if ([...$("#f-stage").options].some((o) => o.value === state.stage)) $("#f-stage").value = state.stage;
  saveHash();
  const status = $("#rows-status");
  const body = $("#rows tbody");
  if (!state.stage) { status.textContent = "no stage yet"; body.replaceChildren(); return; }
  status.className = "status";
  status.textContent = "loading…";
  let data;
  try {
    data = await api("rows", { stage: state.stage, kept: state.kept, reason: state.reason, capability: state.capability,
      round: state.round, score: state.score, min: state.min, max: state.max, q: state.q, offset: state.offset, limit: PAGE });
  } catch (e) { status.className = "status error"; status.textContent = e.message; body.replaceChildren(); return; }
  const what = [state.kept || "all", state.reason && `reason ${state.reason}`, state.capability, state.q && `"${state.q}"`].filter(Boolean).join(", ");
  status.textContent = `${fmt(data.total)} row${data.total === 1 ? "" : "s"} of ${data.stage} (${what})`;
  status.dataset.total = data.total;
  body.replaceChildren(...data.rows.map((r) => el("tr", { "data-key": r.key, onclick: () => openRecord(data.stage, r.key) },
    el("td", { text: String(r.seq) }),
    el("td", { class: r.kept ? "v-kept" : "v-rej", text: r.kept ? "kept" : `rejected: ${r.reason || ""}` }),
    el("td", { text: [r.capability, r.round ? `r${r.round}` : ""].filter(Boolean).join(" ") }),
    el("td", { text: r.prompt }),
    el("td", { text: (r.strength ? `[${r.strength}${r.gap !== null && r.gap !== undefined ? `, gap ${num(r.gap)}` : ""}] ` : "") + r.response }),
    el("td", { class: "scores-cell", text: Object.entries(r.scores).map(([k, v]) => `${k} ${num(v)}`).join(", ") }))));
  pager($("#rows-pager"), data.total, state.offset, PAGE, (o) => { state.offset = o; loadRows(); });
}

function pager(box, total, offset, size, go) {
  const prev = el("button", { text: "‹ previous", disabled: offset <= 0, onclick: () => go(Math.max(0, offset - size)) });
  const next = el("button", { text: "next ›", disabled: offset + size >= total, onclick: () => go(offset + size) });
  const end = Math.min(total, offset + size);
  box.replaceChildren(prev, el("span", { text: total ? `${fmt(offset + 1)}–${fmt(end)} of ${fmt(total)}` : "" }), next);
}

// -- one record, whole ------------------------------------------------------------------------
async function openRecord(stage, key) {
  const box = $("#detail-body");
  $("#detail").hidden = false;
  $("#detail-title").textContent = `${stage} / ${key}`;
  box.replaceChildren(el("p", { text: "loading…" }));
  let r;
  try { r = await api("record", { stage, key }); } catch (e) { box.replaceChildren(el("p", { class: "status error", text: e.message })); return; }
  const rec = r.record;
  box.replaceChildren(
    el("p", {}, el("b", { class: r.kept ? "v-kept" : "v-rej", text: r.kept ? "kept" : `rejected: ${r.reason}` }),
      ` · kind ${r.kind} · group ${r.group}`),
    section("Content", renderBody(r.kind, rec)),
    section("Scores", kv(rec.scores || {})),
    section("Verdicts, stage by stage", el("ol", { class: "trail" }, (rec.verdicts || []).map((v) =>
      el("li", { class: v.kept ? "v-kept" : "v-rej", text: `${v.stage}: ${v.kept ? "kept" : "rejected"}${v.reason ? ` (${v.reason})` : ""}` })))),
    r.stages.length > 1 ? section("This key in the store's stages", el("ol", { class: "trail" }, r.stages.map((s) =>
      el("li", {}, el("a", { href: "#", text: s.stage, onclick: (ev) => { ev.preventDefault(); openRecord(s.stage, key); } }),
        el("span", { class: s.kept ? "v-kept" : "v-rej", text: s.kept ? " kept" : ` rejected (${s.reason})` }))))) : null,
    section("Provenance", kv(rec.provenance || {})),
    Object.keys(rec.meta || {}).length ? section("Meta", kv(rec.meta)) : null,
  );
}

function section(title, ...kids) { return el("div", { class: "section" }, el("h2", { text: title }), ...kids); }

function kv(obj) {
  return el("table", { class: "kv" }, Object.entries(obj).map(([k, v]) => el("tr", {},
    el("td", { text: k }),
    el("td", {}, typeof v === "string" && v.includes("\n") ? el("pre", { text: v })
      : el("span", { text: typeof v === "object" && v !== null ? JSON.stringify(v) : num(v) })))));
}

// text with ``` fences shown as code blocks
function richText(text) {
  const parts = String(text || "").split(/```[\w+-]*\n?/);
  return el("div", { class: "text" }, parts.map((p, i) => (i % 2 ? el("pre", { class: "code", text: p.replace(/\n$/, "") }) : p ? el("span", { text: p }) : null)));
}

function messages(list) {
  return (list || []).map((m) => el("div", { class: `msg ${m.role}` },
    el("div", { class: "role", text: m.role + (m.name ? ` · ${m.name}` : "") + (m.tool_call_id ? ` · answers ${m.tool_call_id}` : "") }),
    m.content ? richText(m.content) : null,
    (m.tool_calls || []).map((c) => el("div", { class: "call" }, `call ${c.id}: `, el("b", { text: c.function.name }),
      el("pre", { text: prettyArgs(c.function.arguments) })))));
}

function prettyArgs(args) {
  try { return JSON.stringify(JSON.parse(args), null, 2); } catch (e) { return String(args); }
}

function renderBody(kind, rec) {
  if (rec.messages) {
    return [rec.tools ? el("details", {}, el("summary", { text: `${rec.tools.length} tool(s) offered` }), el("pre", { text: JSON.stringify(rec.tools, null, 2) })) : null,
      messages(rec.messages), (rec.calls || []).length ? section("Executed calls", el("pre", { text: JSON.stringify(rec.calls, null, 2) })) : null,
      rec.failure ? el("p", { class: "v-rej", text: `failure: ${rec.failure}` }) : null];
  }
  if (kind === "preference") return renderPair(rec);
  if (kind === "step_labels") {
    return [el("div", { class: "msg user" }, el("div", { class: "role", text: "problem" }), richText(rec.prompt)),
      rec.completions.map((s, i) => el("div", { class: "step " + (rec.labels[i] ? "good" : "bad"), "data-label": String(rec.labels[i]) },
        el("span", { class: "lab", text: rec.labels[i] ? "✓" : "✗" }),
        el("span", { class: "muted small", text: `step ${i + 1}` + (rec.soft_labels && rec.soft_labels.length ? ` · ${num(rec.soft_labels[i])}` : "") }),
        richText(s)))];
  }
  if (kind === "code_candidate") {
    return [field("problem", rec.problem), el("h2", { text: `code (repair round ${rec.repair_round})` }), el("pre", { text: rec.code || "(no code)" }),
      el("h2", { text: "tests" }), el("pre", { text: rec.tests || "(no tests)" }),
      el("h2", { text: `runs (${(rec.attempts || []).length})` }),
      (rec.attempts || []).map((a) => el("div", { class: "attempt" + (a.passed ? " passed" : "") },
        el("b", { text: `repair round ${a.repair_round}: ${a.passed ? "passed" : `failed (${a.reason})`}` }),
        a.feedback ? el("pre", { text: a.feedback }) : null,
        (a.lint || []).length ? el("pre", { text: a.lint.join("\n") }) : null)),
      (rec.repairs || []).length ? section("Repair replies", rec.repairs.map((t, i) => el("div", {}, el("b", { text: `round ${i + 1}` }), richText(t)))) : null,
      rec.last_run ? section("Last sandbox run", kv(rec.last_run)) : null,
      rec.reply ? el("details", {}, el("summary", { text: "the model's reply" }), richText(rec.reply)) : null];
  }
  if (kind === "math_solution") {
    return [field("problem", rec.problem), field(`solution (${rec.mode})`, rec.text),
      kv({ gold: rec.answer, extracted: rec.extracted, form: rec.form, correct: rec.correct }),
      (rec.executions || []).length ? section("Code runs", el("pre", { text: JSON.stringify(rec.executions, null, 2) })) : null];
  }
  // any other item: its own fields
  const skip = new Set(["id", "kind", "provenance", "scores", "verdicts", "meta"]);
  return Object.entries(rec).filter(([k]) => !skip.has(k)).map(([k, v]) =>
    typeof v === "string" ? field(k, v) : el("div", {}, el("h2", { text: k }), el("pre", { text: JSON.stringify(v, null, 2) })));
}

function field(name, text) { return el("div", {}, el("h2", { text: name }), richText(text)); }

function renderPair(rec) {
  const gap = rec.responses.length >= 2 && rec.responses[0].score != null && rec.responses[rec.responses.length - 1].score != null
    ? rec.responses[0].score - rec.responses[rec.responses.length - 1].score : null;
  return el("div", { class: "pair-block" },
    messages(rec.prompt),
    el("div", { class: "pair-head", text: `strength: ${rec.strength || "-"} · score gap: ${gap === null ? "-" : num(gap)}` }),
    el("div", { class: "pair" }, rec.responses.map((r) => el("div", { class: `pair-card ${r.label}`, "data-label": r.label },
      el("div", { class: "pair-head" }, el("b", { text: r.label }), r.score != null ? ` · score ${num(r.score)}` : ""),
      richText(r.content)))));
}

// -- preference pairs, side by side -----------------------------------------------------------
async function loadPairs() {
  saveHash();
  const status = $("#pairs-status"), box = $("#pairs");
  if (!state.pairStage) { status.textContent = "this run has no preference stage"; box.replaceChildren(); return; }
  status.textContent = "loading…";
  let data;
  try { data = await api("pairs", { stage: state.pairStage, offset: state.pairOffset, limit: PAIR_PAGE }); }
  catch (e) { status.textContent = e.message; return; }
  status.textContent = `${fmt(data.total)} row${data.total === 1 ? "" : "s"} of ${data.stage}`;
  box.replaceChildren(...data.rows.map((r) => el("div", { class: "pair-row", "data-key": r.key },
    el("div", { class: "muted small" }, el("a", { href: "#", text: r.key, onclick: (ev) => { ev.preventDefault(); openRecord(data.stage, r.key); } }),
      r.kept ? "" : ` · rejected: ${r.reason}`),
    r.record ? renderPair(r.record) : null)));
  pager($("#pairs-pager"), data.total, state.pairOffset, PAIR_PAGE, (o) => { state.pairOffset = o; loadPairs(); });
}

// -- score distributions ----------------------------------------------------------------------
async function loadScores() {
  saveHash();
  const status = $("#scores-status"), box = $("#scores");
  if (!state.scoreStage) { status.textContent = "no stage yet"; return; }
  status.textContent = "loading…";
  let data;
  try { data = await api("scores", { stage: state.scoreStage }); } catch (e) { status.textContent = e.message; return; }
  const names = Object.keys(data.scores);
  status.replaceChildren(`${names.length} score(s) on ${fmt(data.rows)} rows of ${data.stage}` + (data.every > 1 ? ` (every ${data.every}th row sampled)` : "") + " ",
    el("span", { class: "legend" }, el("span", { class: "k", text: "■ kept " }), el("span", { class: "r", text: "■ rejected" })));
  box.replaceChildren(...names.map((name) => histogram(name, data.scores[name])));
}

function histogram(name, s) {
  const w = 320, h = 120, pad = 18, bins = s.bins, n = bins.length || 1;
  const top = Math.max(1, ...bins.map((b) => b.kept + b.rejected));
  const svg = svgEl("svg", { width: w, height: h + pad, viewBox: `0 0 ${w} ${h + pad}` });
  bins.forEach((b, i) => {
    const bw = w / n, x = i * bw, kh = (h * b.kept) / top, rh = (h * b.rejected) / top;
    const g = svgEl("g", {});
    const title = svgEl("title", {}); title.textContent = `${num(b.lo)} – ${num(b.hi)}: kept ${b.kept}, rejected ${b.rejected}`;
    g.append(title);
    g.append(svgEl("rect", { x: x + 1, y: h - kh, width: bw - 2, height: kh, fill: "var(--kept)" }));
    g.append(svgEl("rect", { x: x + 1, y: h - kh - rh, width: bw - 2, height: rh, fill: "var(--rej)" }));
    svg.append(g);
  });
  const lo = svgEl("text", { x: 0, y: h + 14, "font-size": 11 }); lo.textContent = num(s.stats.min);
  const hi = svgEl("text", { x: w, y: h + 14, "font-size": 11, "text-anchor": "end" }); hi.textContent = num(s.stats.max);
  svg.append(lo, hi);
  const st = s.stats;
  return el("div", { class: "hist", "data-score": name }, el("h2", { text: name }), svg,
    el("div", { class: "legend", text: `n ${fmt(st.n)} · median ${num(st.median)} · mean ${num(st.mean)}` }));
}

// -- rounds -----------------------------------------------------------------------------------
async function loadRounds() {
  const box = $("#rounds");
  let data;
  try { data = await api("rounds", {}); } catch (e) { box.textContent = e.message; return; }
  const keys = Object.keys(data.metrics);
  if (!keys.length) { box.textContent = "no round has an evaluation yet (evals: in the round's config)"; return; }
  const color = (j) => `hsl(${(j * 67) % 360} 60% 42%)`;
  const table = el("table", { class: "rounds" },
    el("tr", {}, el("th", { text: "metric" }), data.rounds.map((r) => el("th", { text: `round ${r}` }))),
    keys.map((k, j) => el("tr", { "data-metric": k },
      el("td", {}, el("span", { class: "swatch", style: `background:${color(j)}` }), k),
      data.metrics[k].map((v) => el("td", { text: v === null ? "-" : v.toFixed(4) })))));
  const w = 520, h = 220, pad = 36, R = data.rounds.length;
  const svg = svgEl("svg", { width: w, height: h + 2 * pad });
  const x = (i) => pad + (R > 1 ? (i * (w - 2 * pad)) / (R - 1) : (w - 2 * pad) / 2);
  const y = (v) => pad + h - v * h;  // metrics are rates in [0, 1]
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(svgEl("line", { x1: pad, y1: y(v), x2: w - pad, y2: y(v), stroke: v ? "#eee" : "#999" }));
    const t = svgEl("text", { x: pad - 6, y: y(v) + 4, "font-size": 11, "text-anchor": "end" }); t.textContent = String(v); svg.append(t);
  }
  keys.forEach((k, j) => {
    const pts = data.metrics[k].map((v, i) => (v === null ? null : [x(i), y(Math.max(0, Math.min(1, v)))])).filter(Boolean);
    svg.append(svgEl("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: color(j), "stroke-width": 2 }));
    pts.forEach((p) => { const c = svgEl("circle", { cx: p[0], cy: p[1], r: 3, fill: color(j) }); const t = svgEl("title", {}); t.textContent = k; c.append(t); svg.append(c); });
  });
  data.rounds.forEach((r, i) => { const t = svgEl("text", { x: x(i), y: pad + h + 16, "font-size": 11, "text-anchor": "middle" }); t.textContent = `round ${r}`; svg.append(t); });
  box.replaceChildren(el("h2", { text: "Held-out evaluation by round" }), svg, table);
}

// -- tabs and wiring --------------------------------------------------------------------------
function switchTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== `tab-${tab}`;
  if (tab === "pairs") loadPairs();
  if (tab === "scores") loadScores();
  if (tab === "rounds") loadRounds();
  saveHash();
}

function wire() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); const stage = state.stage; formToState(); state.offset = 0;
    if (state.stage !== stage) { state.reason = ""; state.capability = ""; state.round = ""; state.score = ""; loadFacets().then(loadRows); } else loadRows(); });
  $("#f-stage").addEventListener("change", () => { state.stage = $("#f-stage").value; state.offset = 0; state.reason = ""; state.capability = ""; state.round = ""; state.score = "";
    loadFacets().then(loadRows); });
  $("#p-stage").addEventListener("change", () => { state.pairStage = $("#p-stage").value; state.pairOffset = 0; loadPairs(); });
  $("#s-stage").addEventListener("change", () => { state.scoreStage = $("#s-stage").value; loadScores(); });
  $("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("#detail").hidden = true; });
  $("#run").addEventListener("change", async () => {
    Object.assign(state, { run: $("#run").value, stage: "", reason: "", kept: "", offset: 0, pairStage: "", pairOffset: 0, scoreStage: "" });
    await start();
  });
}

async function start() {
  await loadMeta();
  await loadFunnel();
  await loadFacets();
  await loadRows();
  switchTab(state.tab);
}

(async () => {
  loadHash();
  wire();
  await loadRuns();
  await start();
})();
