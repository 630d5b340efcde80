// quicktune ui: one page, five views (#/ runs, #/run?run=R, #/compare?a=A&b=B, #/chat?a=M&b=M, #/history).
// Plain DOM and uPlot (vendored in static/vendor/uplot); every text goes in through textContent.
"use strict";

const page = document.getElementById("page");
let timers = [];  // polling of the view on screen, stopped when the view changes
let plots = [];

// --- helpers ----------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, {cache: "no-store"});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error + (data.hint ? ` — ${data.hint}` : ""));
  return data;
}

// page.replaceChildren, leaving out the parts a view does not have (null, false)
function show(...children) {
  page.replaceChildren(...children.flat(Infinity).filter(c => c !== null && c !== undefined && c !== false));
}

function every(ms, fn) { timers.push(setInterval(fn, ms)); }

function num(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(digits)) : String(value);
}

function pct(value) { return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`; }

function ago(seconds) {
  if (!seconds) return "";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function runLink(name) { return el("a", {href: `#/run?run=${encodeURIComponent(name)}`, text: name}); }

function fileUrl(run, relative) {
  return "/files/" + [...run.split("/"), ...relative.split("/")].map(encodeURIComponent).join("/");
}

function badge(status) { return el("span", {class: `badge ${status}`, text: status}); }

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", {text: h})))),
    el("tbody", {}, rows));
}

function section(title, ...children) { return el("section", {}, el("h2", {text: title}), ...children); }

function ready() { page.dataset.ready = "1"; }

function fail(error) {
  show(el("p", {class: "error", id: "error", text: String(error.message || error)}));
  ready();
}

// --- curves -----------------------------------------------------------------------------------

// metrics.jsonl lines: {"step", "loss", ...} while training, {"step", "eval_loss", ...} at each eval.
class Curves {
  constructor() { this.loss = new Map(); this.eval = new Map(); }
  add(records) {
    for (const r of records) {
      if (typeof r.step !== "number") continue;
      if (typeof r.loss === "number") this.loss.set(r.step, r.loss);
      if (typeof r.eval_loss === "number") this.eval.set(r.step, r.eval_loss);
    }
  }
  get points() { return this.loss.size + this.eval.size; }
}

function aligned(curveSets) {
  // uPlot wants one x array; every series gets null where it has no point at that step
  const steps = [...new Set(curveSets.flatMap(c => [...c.loss.keys(), ...c.eval.keys()]))].sort((a, b) => a - b);
  const data = [steps];
  for (const c of curveSets) {
    data.push(steps.map(s => c.loss.has(s) ? c.loss.get(s) : null));
    data.push(steps.map(s => c.eval.has(s) ? c.eval.get(s) : null));
  }
  return data;
}

const COLORS = ["#2563eb", "#f59e0b", "#16a34a", "#dc2626"];

function makePlot(target, names) {
  const series = [{label: "step"}];
  names.forEach((name, i) => series.push({
    label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
    points: {show: true, size: 5}, dash: name.includes("eval") ? [6, 4] : undefined,
  }));
  const width = Math.max(320, Math.min(target.clientWidth || 860, 1100));
  const plot = new uPlot({width, height: 300, series, scales: {x: {time: false}},
    axes: [{label: "step"}, {label: "loss"}]}, [[], ...names.map(() => [])], target);
  plots.push(plot);
  return plot;
}

// --- Runs -------------------------------------------------------------------------------------

async function runsView() {
  const data = await api("/api/runs");
  document.getElementById("root-folder").textContent = data.root;
  const chosen = new Set();
  const compare = el("button", {id: "compare-selected", disabled: true, onclick: () => {
    const [a, b] = [...chosen];
    location.hash = `#/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`;
  }}, "Compare the two selected");
  const body = el("tbody");
  const lineage = el("div", {id: "lineage"});
  const render = (d) => {
    body.replaceChildren(...d.runs.map(r => el("tr", {dataset: {run: r.name, status: r.status}},
      el("td", {}, el("input", {type: "checkbox", "aria-label": `select ${r.name}`, checked: chosen.has(r.name), onchange: (e) => {
        e.target.checked ? chosen.add(r.name) : chosen.delete(r.name);
        compare.disabled = chosen.size !== 2;
      }})),
      el("td", {}, runLink(r.name), r.promoted ? el("span", {class: "promoted", text: " ★ promoted"}) : null),
      el("td", {}, badge(r.status), r.status === "running" && r.updated ? el("div", {class: "muted small", text: `last log ${ago(r.updated)}`}) : null),
      el("td", {text: r.method || "–"}),
      el("td", {class: "mono small", text: r.base || "–"}),
      el("td", {class: "num", text: num(r.steps)}),
      el("td", {class: "num", text: num(r.train_loss)}),
      el("td", {class: "num", text: num(r.eval_loss)}),
      el("td", {text: r.headline || "–"}),
      el("td", {}, r.exported.length ? r.exported.map(q => el("span", {class: "chip", text: q})) : "–"),
      el("td", {}, r.parent ? (r.parent.includes("/v") && !r.parent.startsWith("/") ? runLink(r.parent) : r.parent) : "–"),
    )));
    const tree = (nodes) => el("ul", {}, nodes.map(n => el("li", {}, runLink(n.name), n.children.length ? tree(n.children) : null)));
    lineage.replaceChildren(d.lineage.length ? tree(d.lineage) : el("p", {class: "muted", text: "no runs"}));
  };
  render(data);
  show(
    el("h1", {text: `Runs (${data.runs.length})`}),
    data.runs.length ? null : el("p", {text: "No runs here yet: quicktune run smollm2-demo"}),
    el("table", {id: "runs-table"},
      el("thead", {}, el("tr", {}, ["", "run", "status", "method", "base", "steps", "train loss", "best eval loss", "eval", "exported", "parent"].map(h => el("th", {text: h})))),
      body),
    el("p", {}, compare),
    section("Lineage (parent → child, from --from)", lineage),
  );
  let last = JSON.stringify(data);
  every(3000, async () => {
    const fresh = await api("/api/runs");
    const text = JSON.stringify(fresh);
    if (text !== last) { last = text; render(fresh); }
  });
}

// --- promotions -------------------------------------------------------------------------------

const TOKEN = (document.querySelector('meta[name="quicktune-token"]') || {}).content || "";

function historyTable(h) {
  if (h.error) return el("p", {class: "error", text: h.error});
  if (!h.lines.length) return el("p", {class: "muted", text: `nothing promoted yet: quicktune runs promote ${h.recipe}/vN`});
  return table(["when", "what", "run", "who", "why", "checked against", "Ollama"], h.lines.map(l => {
    const c = l.compared || {};
    const worse = (c.regressions || []).length ? ` (worse on ${c.regressions.join(", ")})` : "";
    return el("tr", {dataset: {action: l.action, run: l.run}},
      el("td", {class: "small", text: l.when}),
      el("td", {}, l.action, l.forced ? el("span", {class: "error", text: " (forced)"}) : null),
      el("td", {}, runLink(l.run)), el("td", {text: l.who}), el("td", {text: l.why}),
      el("td", {text: c.with ? `${c.with}${worse}` : "–"}),
      el("td", {class: "small"}, l.tags.length ? l.tags.map(t => el("span", {class: "chip mono", text: t})) : "–", ` ${l.ollama}`));
  }), {class: "history", dataset: {recipe: h.recipe}});
}

async function historyView() {
  const data = await api("/api/history");
  show(el("h1", {text: "Promotions"}),
    data.recipes.length ? null : el("p", {text: "Nothing promoted yet: promote a run from its page, or quicktune runs promote vN."}),
    data.recipes.map(h => section(`${h.recipe} · promoted now: ${h.current || "none"}`, historyTable(h))));
}

async function postPromotion(body) {
  const response = await fetch("/api/promote", {method: "POST", cache: "no-store",
    headers: {"Content-Type": "application/json", "X-Quicktune-Token": TOKEN}, body: JSON.stringify(body)});
  return {ok: response.ok, data: await response.json()};
}

function promotionState(p) {
  const current = p.history.current || "none";
  if (p.now) return el("p", {id: "promotion-state", class: "promoted", text: `★ promoted now (since ${p.promoted_at[p.promoted_at.length - 1] || "?"})`});
  return el("p", {id: "promotion-state", text: p.promoted_at.length ? `promoted before (${p.promoted_at.join(", ")}), not now; promoted now: ${current}`
    : `not promoted; promoted now: ${current}`});
}

function promoteSection(run) {
  const p = run.promotion, h = p.history;
  const state = el("div", {}, promotionState(p));
  const history = el("div", {}, historyTable(h));
  const force = el("input", {type: "checkbox", id: "promote-force"});
  const reason = el("input", {type: "text", id: "promote-reason", size: 50, placeholder: "why (needed with force)"});
  const name = el("input", {type: "text", id: "promote-name", size: 20, placeholder: run.name.split("/")[0].toLowerCase()});
  const result = el("div", {id: "promote-result"});
  const button = el("button", {id: "promote", disabled: p.now, onclick: async () => {
    button.disabled = true;
    result.replaceChildren(el("p", {class: "muted", text: "checking…"}));
    try {
      const {ok, data} = await postPromotion({run: run.name, force: force.checked, reason: reason.value, name: name.value});
      result.dataset.outcome = ok ? "promoted" : "refused";
      const said = ok ? [el("p", {class: "ok", id: "promote-done", text: `promoted ${data.entry.run}: ${data.entry.why}; Ollama ${data.entry.tags.join(", ")} (${data.entry.ollama})`})]
        : [el("p", {class: "error", id: "promote-error", text: data.error}), el("ul", {}, (data.problems || []).map(x => el("li", {class: "mono small", text: x}))),
           data.hint ? el("p", {class: "warning", text: data.hint}) : null];
      if (data.output) said.push(el("pre", {class: "small", id: "promote-output", text: data.output}));
      result.replaceChildren(...said.filter(Boolean));
      if (ok) {
        const fresh = (await api(`/api/run?run=${encodeURIComponent(run.name)}`)).promotion;
        state.replaceChildren(promotionState(fresh));
        history.replaceChildren(historyTable(fresh.history));
        button.disabled = fresh.now;
        return;
      }
    } catch (error) { result.replaceChildren(el("p", {class: "error", text: String(error.message || error)})); }
    button.disabled = false;
  }}, "Promote");
  return section("Promotion", state,
    el("p", {class: "muted small", text: "Does what quicktune runs promote does: checks the run (finished, exported, scored) against the promoted version's eval scores, tags it in Ollama (or shows the commands) and records it in promotions.jsonl."}),
    el("div", {class: "pickers"}, button, " ", el("label", {}, force, " force, because: "), reason, " ", el("label", {}, "Ollama name ", name)),
    result, el("h3", {text: `History of ${h.recipe}`}), history);
}

// --- one run ----------------------------------------------------------------------------------

function manifestSection(m) {
  const data = m.data || {};
  const files = (data.files || []).map(f => el("tr", {},
    el("td", {class: "mono small", text: f.path}), el("td", {text: f.format}), el("td", {class: "num", text: f.rows}),
    el("td", {class: "mono small", title: f.sha256, text: (f.sha256 || "").slice(0, 16)})));
  const facts = [
    ["status", m.status], ["method", m.method], ["base model", (m.base_model || {}).spec],
    ["base fingerprint", (m.base_model || {}).fingerprint], ["seed", m.seed], ["started", m.started], ["ended", m.ended],
    ["backend", m.backend ? `${m.backend.name} on ${m.backend.device}` : null],
    ["train rows", data.train_rows], ["eval rows", `${num(data.eval_rows)} (${data.eval_source || "–"})`],
    ["system prompt served", ((data.system_prompt || {}).served) ?? "none"],
    ["recipe sha256", m.recipe_sha256],
  ];
  const metrics = Object.entries(m.metrics || {}).map(([k, v]) => el("tr", {}, el("td", {text: k}), el("td", {class: "num", text: num(v)})));
  const packages = Object.entries(m.packages || {}).map(([k, v]) => el("span", {class: "chip", text: `${k} ${v}`}));
  return section("Manifest",
    el("dl", {class: "facts"}, facts.filter(([, v]) => v !== undefined).map(([k, v]) => [el("dt", {text: k}), el("dd", {text: v ?? "–"})])),
    el("h3", {text: "Data files"}), table(["file", "format", "rows", "sha256"], files, {id: "data-files"}),
    metrics.length ? [el("h3", {text: "Final metrics"}), table(["metric", "value"], metrics)] : null,
    el("h3", {text: "Packages"}), el("p", {}, packages),
    el("details", {}, el("summary", {text: "manifest.json"}), el("pre", {class: "small", text: JSON.stringify(m, null, 2)})));
}

function exampleSection(name) {
  const box = el("div", {id: "example", class: "example"}, el("span", {class: "muted", text: "rendering with the recipe's tokenizer…"}));
  api(`/api/example?run=${encodeURIComponent(name)}`).then(ex => {
    const tokens = ex.tokens.map(([text, trained]) => el("span", {class: trained ? "trained" : "context", text}));
    box.replaceChildren(
      el("p", {class: "muted small", text: `${ex.origin || ""} · green is trained, grey is context${ex.stop ? ` · stop token ${ex.stop}` : ""}`}),
      ...ex.changed.map(c => el("p", {class: "warning", text: `data: ${c}`})),
      el("pre", {class: "tokens"}, tokens));
    box.dataset.trained = ex.tokens.filter(t => t[1]).length;
  }).catch(e => box.replaceChildren(el("p", {class: "error", text: e.message})));
  return section("Rendered example (data check)", box);
}

function fidelitySection(f) {
  if (!f) return section("Fidelity", el("p", {class: "muted", text: "not exported (or exported with --no-verify)"}));
  const n = f.prompts;
  const rows = [el("tr", {}, el("td", {text: "merged model (reference)"}), el("td"), el("td"), el("td"), el("td", {class: "num", text: `${f.reference_stops}/${n}`}))];
  if (f.trained) rows.push(el("tr", {}, el("td", {text: `as trained: ${f.trained.base} base + adapter`}),
    el("td", {class: "num", text: pct(f.trained.same_top_token)}), el("td", {class: "num", text: pct(f.trained.greedy_agreement)}),
    el("td", {class: "num", text: `${f.trained.identical_answers}/${n}`}), el("td", {class: "num", text: `${f.trained.stops}/${n}`})));
  for (const g of f.ggufs || []) rows.push(el("tr", {}, el("td", {text: g.name}),
    el("td", {class: "num", text: pct(g.same_top_token)}), el("td", {class: "num", text: pct(g.greedy_agreement)}),
    el("td", {class: "num", text: g.identical_answers === null ? "–" : `${g.identical_answers}/${n}`}),
    el("td", {class: "num", text: g.stops === null ? "–" : `${g.stops}/${n}`})));
  const passed = f.passed === undefined ? null : f.passed;
  return section(`Fidelity on ${n} held-out prompts (greedy, up to ${f.max_new_tokens} tokens)`,
    table(["GGUF", "same top token", "greedy agreement", "identical answers", "ends with EOS"], rows, {id: "fidelity"}),
    el("ul", {},
      f.ollama_renderer ? el("li", {text: `Ollama renders with: ${f.ollama_renderer}`}) : null,
      el("li", {text: `prompt as Ollama builds it == training tokens: ${f.prompt_tokens_equal === null ? "not checked" : `${f.prompt_tokens_equal}/${n}`}`}),
      el("li", {text: `template check: ${f.template_parity}`}),
      passed === null ? null : el("li", {class: passed ? "ok" : "error", text: passed ? "the export's fidelity gate passed" : `the gate failed: ${(f.failures || []).map(x => `${x.row}: ${x.what}`).join("; ")}`}),
      (f.skipped || []).length ? el("li", {class: "muted", text: `skipped: ${f.skipped.join("; ")}`}) : null));
}

function copyButton(text, id) {
  const button = el("button", {class: "copy", id, onclick: async () => {
    try { await navigator.clipboard.writeText(text); }
    catch (e) {  // no clipboard permission: select the text so Ctrl-C copies it
      const range = document.createRange(); range.selectNodeContents(button.previousSibling);
      getSelection().removeAllRanges(); getSelection().addRange(range); document.execCommand("copy");
    }
    button.textContent = "copied"; setTimeout(() => { button.textContent = "copy"; }, 1500);
  }}, "copy");
  return button;
}

function modelfileSection(run) {
  if (!run.modelfiles.length) return section("Ollama", el("p", {class: "muted", text: `not exported yet: quicktune export ${run.name}`}));
  return section("Ollama", run.modelfiles.map(mf => el("div", {class: "modelfile", dataset: {quant: mf.quant}},
    el("h3", {text: mf.file}),
    el("div", {class: "command"}, el("code", {text: mf.create}), copyButton(mf.create, `copy-${mf.quant}`)),
    el("div", {class: "command"}, el("code", {text: mf.run})),
    el("details", {}, el("summary", {text: "Modelfile"}), el("pre", {class: "small", text: mf.text})))),
    run.chat ? el("p", {}, "here: ", el("code", {text: run.chat}), " · ",
      el("a", {href: `#/chat?a=${encodeURIComponent(`${run.name}:${run.modelfiles[0].quant}`)}&b=${encodeURIComponent(`base:${run.name}`)}`, text: "chat with it next to its base"})) : null);
}

function evalSection(run) {
  if (!run.evals.length) return section("Eval", el("p", {class: "muted", text: `not scored yet: quicktune eval ${run.name}`}));
  return section("Eval reports", run.evals.map(r => el("div", {class: "report"},
    el("h3", {text: `${r.file} · against ${r.against || "nothing"} · ${r.rows} rows · headline ${r.metric} ${pct(r.headline)}`}),
    table(["subject", ...Object.keys(r.subjects[0].metrics || {}), "loss"], r.subjects.map(s => el("tr", {},
      el("td", {text: s.label}), ...Object.values(s.metrics || {}).map(v => el("td", {class: "num", text: pct(v)})),
      el("td", {class: "num", text: num(s.loss, 3)})))),
    r.chart ? el("img", {src: fileUrl(run.name, r.chart), alt: `${r.file} chart`, class: "chart"}) : null)));
}

async function runView(params) {
  const name = params.get("run");
  const run = await api(`/api/run?run=${encodeURIComponent(name)}`);
  const m = run.manifest;
  const curves = new Curves();
  const chartBox = el("div", {id: "curve", class: "chart-box"});
  const counter = el("span", {id: "curve-points", class: "muted"});
  const latest = el("span", {id: "latest"});
  const status = el("span", {id: "run-status"}, badge(m.status));
  show(
    el("h1", {}, run.name, " ", status, run.promotion.now ? el("span", {class: "promoted", text: " ★ promoted"}) : null),
    el("p", {class: "muted"}, `${m.method} on ${(m.base_model || {}).spec} · started ${m.started}`,
      run.parent ? [" · from ", runLink(run.parent)] : null),
    section("Loss", el("p", {}, latest, " ", counter), chartBox,
      run.loss_png ? el("p", {class: "small"}, el("a", {href: fileUrl(run.name, run.loss_png), text: "loss.png"})) : null),
    fidelitySection(run.fidelity),
    modelfileSection(run),
    evalSection(run),
    promoteSection(run),
    exampleSection(run.name),
    manifestSection(m),
    run.recipe ? section("Recipe", el("details", {}, el("summary", {text: "recipe.yaml (resolved)"}), el("pre", {class: "small", text: run.recipe}))) : null,
  );
  const plot = makePlot(chartBox, ["loss", "eval_loss"]);
  let offset = 0;
  let state = m.status;
  const pull = async () => {
    const got = await api(`/api/metrics?run=${encodeURIComponent(name)}&offset=${offset}`);
    if (got.reset) curves.loss.clear(), curves.eval.clear();
    offset = got.offset;
    if (!got.records.length && plot.data[0].length) return;
    curves.add(got.records);
    plot.setData(aligned([curves]));
    chartBox.dataset.points = curves.points;
    counter.textContent = `${curves.loss.size} loss and ${curves.eval.size} eval points`;
    const steps = [...curves.loss.keys()];
    if (steps.length) latest.textContent = `step ${steps[steps.length - 1]}: loss ${num(curves.loss.get(steps[steps.length - 1]))}`;
  };
  await pull();
  ready();
  every(1500, pull);  // metrics.jsonl grows while the run trains: no reload needed
  every(5000, async () => {
    const fresh = await api(`/api/run?run=${encodeURIComponent(name)}`);
    if (fresh.manifest.status !== state) { state = fresh.manifest.status; route(); }
  });
}

// --- Compare ----------------------------------------------------------------------------------

async function compareView(params) {
  const runs = (await api("/api/runs")).runs.map(r => r.name);
  let a = params.get("a") || runs[runs.length - 2] || "";
  let b = params.get("b") || runs[runs.length - 1] || "";
  const pick = (id, value) => el("select", {id}, runs.map(r => el("option", {value: r, selected: r === value, text: r})));
  const pickA = pick("compare-a", a), pickB = pick("compare-b", b);
  const go = el("button", {onclick: () => { location.hash = `#/compare?a=${encodeURIComponent(pickA.value)}&b=${encodeURIComponent(pickB.value)}`; }}, "Compare");
  const head = el("div", {class: "pickers"}, "A ", pickA, " B ", pickB, " ", go);
  if (!a || !b) { show(el("h1", {text: "Compare"}), head, el("p", {text: "Two runs are needed."})); return ready(); }
  const c = await api(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const onlyDiff = el("input", {type: "checkbox", id: "only-differences", checked: true, onchange: () => recipe.classList.toggle("only-diff", onlyDiff.checked)});
  const recipe = table(["recipe key", c.a, c.b], c.recipe.map(r => el("tr", {class: r.differs ? "diff" : "same"},
    el("td", {class: "mono", text: r.key}), el("td", {class: "mono", text: JSON.stringify(r.a)}), el("td", {class: "mono", text: JSON.stringify(r.b)}))),
    {id: "recipe-diff", class: "only-diff"});
  const other = table(["", "", c.a, c.b], c.table.map(r => el("tr", {class: r.a !== r.b ? "diff" : "same"},
    el("td", {class: "muted", text: r.section}), el("td", {text: r.key}), el("td", {class: "num", text: r.a}), el("td", {class: "num", text: r.b}))));
  const chartBox = el("div", {id: "compare-curve", class: "chart-box"});
  show(
    el("h1", {}, "Compare ", runLink(c.a), " and ", runLink(c.b)), head,
    section("Recipes", el("label", {}, onlyDiff, " only the keys that differ"), recipe,
      el("p", {class: "muted small", text: `${c.recipe.filter(r => r.differs).length} of ${c.recipe.length} keys differ`})),
    section("Data and training", other, c.notes.map(n => el("p", {class: "muted", text: n}))),
    section("Curves", chartBox),
    evalCompare(c),
  );
  const sets = [new Curves(), new Curves()];
  const got = await Promise.all([c.a, c.b].map(r => api(`/api/metrics?run=${encodeURIComponent(r)}&offset=0`)));
  got.forEach((g, i) => sets[i].add(g.records));
  const plot = makePlot(chartBox, [`${c.a} loss`, `${c.a} eval_loss`, `${c.b} loss`, `${c.b} eval_loss`]);
  plot.setData(aligned(sets));
  chartBox.dataset.points = sets[0].points + sets[1].points;
  ready();
}

function evalCompare(c) {
  const e = c.eval;
  if (!e) return section("Eval", el("p", {class: "muted", text: "no eval on the same held-out rows (see the notes above)"}));
  const metrics = table(["metric", c.a, c.b, "change"], e.metrics.map(m => el("tr", {class: m.metric === e.headline ? "headline" : ""},
    el("td", {text: m.metric + (m.metric === e.headline ? " (headline)" : "")}), el("td", {class: "num", text: pct(m.a)}), el("td", {class: "num", text: pct(m.b)}),
    el("td", {class: `num ${m.change > 0 ? "up" : m.change < 0 ? "down" : ""}`, text: m.change === null ? "–" : `${m.change >= 0 ? "+" : ""}${(m.change * 100).toFixed(1)} pts`}))), {id: "eval-metrics"});
  const rows = e.differing.map(d => el("tr", {},
    el("td", {class: "num", text: d.row}), el("td", {text: d.prompt}), el("td", {class: "mono small", text: d.reference}),
    el("td", {class: "mono small", text: d.a + (d.a_stopped ? "" : " (no EOS)")}), el("td", {class: "mono small", text: d.b + (d.b_stopped ? "" : " (no EOS)")})));
  return section(`Eval on ${e.rows} held-out rows (${e.rows_sha256})`, el("p", {class: "muted small", text: `from ${e.source}`}), metrics,
    el("h3", {text: `Rows where the answers differ: ${e.differing_total}${e.differing_total > e.differing.length ? ` (first ${e.differing.length})` : ""}`}),
    table(["row", "prompt", "reference", c.a, c.b], rows, {id: "differing-rows"}));
}

// --- Chat -------------------------------------------------------------------------------------

async function chatView(params) {
  const models = (await api("/api/chat/models")).models;
  if (!models.length) {
    show(el("h1", {text: "Chat"}), el("p", {text: "Nothing to chat with: export a run first (quicktune export RUN)."}));
    return ready();
  }
  const panes = [0, 1].map(i => {
    const wanted = params.get(i ? "b" : "a");
    const select = el("select", {id: `model-${i}`},
      i ? el("option", {value: "", text: "(none)"}) : null,
      models.map(m => el("option", {value: m.id, selected: m.id === wanted, text: m.name})));
    const log = el("div", {class: "log", id: `log-${i}`});
    const info = el("div", {class: "muted small", id: `info-${i}`});
    return {select, log, info, history: [], box: el("div", {class: "pane"}, select, log, info)};
  });
  if (!params.get("b") && models.length > 1) panes[1].select.value = models[1].id;
  const input = el("textarea", {id: "prompt", rows: 3, placeholder: "Message both models…"});
  const budget = el("input", {id: "max-tokens", type: "number", min: 1, max: 2048, value: 256});
  const send = el("button", {id: "send"}, "Send");
  const reset = el("button", {id: "reset", onclick: () => panes.forEach(p => { p.history = []; p.log.replaceChildren(); p.info.textContent = ""; })}, "Reset");
  panes.forEach(p => p.select.addEventListener("change", () => reset.click()));
  const ask = async (pane, message) => {
    const model = pane.select.value;
    if (!model) return;
    pane.log.append(el("div", {class: "msg user", text: message}));
    const bubble = el("div", {class: "msg assistant streaming"});
    pane.log.append(bubble);
    const started = performance.now();
    let chunks = 0, first = null;
    try {
      const response = await fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({model, history: pane.history, message, max_tokens: Number(budget.value) || 256})});
      if (!response.ok) throw new Error((await response.json()).error);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        if (first === null) first = performance.now() - started;
        chunks += 1;
        bubble.textContent += decoder.decode(value, {stream: true});
        bubble.dataset.chunks = chunks;
        pane.log.scrollTop = pane.log.scrollHeight;
      }
      bubble.textContent += decoder.decode();
      const total = performance.now() - started;
      pane.history.push({role: "user", content: message}, {role: "assistant", content: bubble.textContent});
      bubble.dataset.firstMs = Math.round(first ?? total);
      bubble.dataset.totalMs = Math.round(total);
      pane.info.textContent = `${response.headers.get("X-Quicktune-Model")} · first text after ${Math.round(first ?? total)} ms · ${chunks} pieces in ${(total / 1000).toFixed(1)} s`;
    } catch (error) {
      bubble.classList.add("error");
      bubble.textContent = String(error.message || error);
    }
    bubble.classList.remove("streaming");
    bubble.classList.add("done");
  };
  send.addEventListener("click", async () => {
    const message = input.value.trim();
    if (!message) return;
    input.value = "";
    send.disabled = true;
    await Promise.all(panes.map(p => ask(p, message)));  // the same prompt to both, at the same time
    send.disabled = false;
  });
  input.addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.click(); } });
  show(
    el("h1", {text: "Chat"}),
    el("p", {class: "muted small", text: "llama.cpp on the exported GGUF, with the template, stop tokens and system prompt the run was trained with. Enter sends to both."}),
    el("div", {class: "panes"}, panes.map(p => p.box)),
    el("div", {class: "composer"}, input, el("div", {}, el("label", {}, "max tokens ", budget), " ", send, " ", reset)),
  );
  ready();
}

// --- routing ----------------------------------------------------------------------------------

async function route() {
  timers.forEach(clearInterval); timers = [];
  plots.forEach(p => p.destroy()); plots = [];
  delete page.dataset.ready;
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const view = {"/": runsView, "/run": runView, "/compare": compareView, "/chat": chatView, "/history": historyView}[path];
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.nav === (path.slice(1) || "runs")));
  show(el("p", {class: "muted", text: "loading…"}));
  try {
    if (!view) throw new Error(`no page ${path}`);
    await view(params);
    ready();
  } catch (error) { fail(error); }
}

window.addEventListener("hashchange", route);
route();
