// Jobs: the paged list (triggers in words, next fires, target, last run, paused) and a job's page
// (definition with secrets masked, its runs, a Run form built from its parameters, pause/resume).

import { api } from "./api.js";
import { ago, badge, errorBox, h, link, pre, section, table, throttle, when } from "./ui.js";

function triggerCell(t) {
  return h(
    "div",
    { class: "trigger" },
    h("span", {}, t.text),
    t.next && t.next.length ? h("ul", { class: "fires", "aria-label": `Next fires of ${t.id}` }, t.next.map((at) => h("li", {}, when(at, t.timezone || "UTC")))) : null,
  );
}

function lastRun(j) {
  if (!j.last_run) return h("span", { class: "muted" }, "never ran");
  return h("span", {}, link(`#/runs/${encodeURIComponent(j.last_run.id)}`, badge(j.last_run.state), { "aria-label": `Last run: ${j.last_run.state.replace("_", " ")}` }), " ", ago(j.last_run.created_at));
}

export async function renderList(ctx) {
  const { main, query, go } = ctx;
  const q = query.get("q") || "";
  const cursor = query.get("cursor") || "";
  const input = h("input", { id: "job-filter", type: "search", name: "q", value: q, autocomplete: "off" });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter jobs" }, h("label", { for: "job-filter" }, "Name contains"), input, h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("/jobs", { q: input.value.trim() });
  });
  const body = h("div", {});
  main.append(h("h1", {}, "Jobs"), form, body);

  async function load() {
    let page;
    try {
      page = await api("/dashboard/jobs", { query: { q, cursor, limit: 50 } });
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    if (!ctx.isCurrent()) return;
    const rows = page.items.map((j) => ({
      data: { job: j.name },
      cells: [
        h("div", {}, link(`#/jobs/${encodeURIComponent(j.name)}`, j.name), j.description ? h("div", { class: "muted small" }, j.description) : null),
        j.triggers.length ? j.triggers.map(triggerCell) : h("span", { class: "muted" }, "no triggers"),
        j.target,
        lastRun(j),
        j.paused ? h("span", { class: "badge s-paused" }, "paused") : "no",
      ],
    }));
    body.replaceChildren(
      h("p", { class: "muted", id: "job-count" }, `${page.total} job${page.total === 1 ? "" : "s"}${q ? ` matching “${q}”` : ""}.`),
      table("Jobs", ["Name", "Triggers (next fires in the job's time zone)", "Target", "Last run", "Paused"], rows, "No jobs."),
      pager("/jobs", { q }, cursor, page.next_cursor),
    );
  }

  const missed = await ctx.firstRead(load);
  const refresh = throttle(load, 2000);
  const off = ctx.live(refresh);
  if (missed) refresh();
  return off;
}

export function pager(path, query, cursor, next) {
  const qs = (extra) => {
    const p = new URLSearchParams(Object.entries({ ...query, ...extra }).filter(([, v]) => v));
    const s = p.toString();
    return `#${path}${s ? "?" + s : ""}`;
  };
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    cursor ? link(qs({ cursor: "" }), "First page") : null,
    next ? link(qs({ cursor: next }), "Next page", { rel: "next" }) : h("span", { class: "muted" }, "Last page"),
  );
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function paramField(p) {
  const id = `param-${p.name}`;
  const required = p.required !== null && p.required !== undefined ? p.required : p.default === null || p.default === undefined;
  const label = h("label", { for: id }, p.name, required ? h("span", { class: "req" }, " (required)") : null, h("span", { class: "muted small" }, ` ${p.type}`));
  const help = p.description ? h("p", { class: "help", id: `${id}-help` }, p.description) : null;
  const common = { id, name: p.name, "aria-describedby": help ? `${id}-help` : undefined, required: required || undefined };
  const def = p.secret ? null : p.default;
  let input;
  if (p.choices && p.choices.length) {
    input = h("select", common, required ? null : h("option", { value: "" }, "(default)"), p.choices.map((c) => h("option", { value: JSON.stringify(c), selected: def !== null && JSON.stringify(c) === JSON.stringify(def) }, String(c))));
  } else if (p.type === "boolean") {
    input = h("select", common, required ? null : h("option", { value: "" }, "(default)"), h("option", { value: "true", selected: def === true }, "true"), h("option", { value: "false", selected: def === false }, "false"));
  } else if (p.type === "json") {
    input = h("textarea", { ...common, rows: 3, spellcheck: "false" }, def !== null && def !== undefined ? JSON.stringify(def) : "");
  } else {
    const type = p.secret ? "password" : p.type === "integer" || p.type === "number" ? "number" : "text";
    input = h("input", { ...common, type, step: p.type === "integer" ? "1" : p.type === "number" ? "any" : undefined, value: def !== null && def !== undefined ? String(def) : "", autocomplete: "off" });
  }
  input.dataset.ptype = p.type;
  input.dataset.choice = p.choices && p.choices.length ? "1" : "";
  return h("div", { class: "field" }, label, input, help);
}

function readParams(form, parameters) {
  const out = {};
  for (const p of parameters) {
    const el = form.elements.namedItem(p.name);
    const raw = el.value;
    if (raw === "") continue; // the parameter's default applies
    if (el.dataset.choice || p.type === "boolean") out[p.name] = JSON.parse(raw);
    else if (p.type === "integer") out[p.name] = Number.parseInt(raw, 10);
    else if (p.type === "number") out[p.name] = Number(raw);
    else if (p.type === "json") {
      try {
        out[p.name] = JSON.parse(raw);
      } catch {
        throw Object.assign(new Error(`${p.name}: not valid JSON`), { details: [] });
      }
    } else out[p.name] = raw;
  }
  return out;
}

function runForm(ctx, job) {
  const status = h("div", { id: "run-status", "aria-live": "polite" });
  const fields = job.parameters.map(paramField);
  const form = h("form", { class: "card run-form", "aria-labelledby": "h-run" }, fields.length ? fields : h("p", { class: "muted" }, "This job declares no parameters."), h("button", { type: "submit", class: "primary" }, `Run ${job.name}`), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    status.replaceChildren("Starting…");
    try {
      const params = readParams(form, job.parameters);
      const run = await api(`/jobs/${encodeURIComponent(job.name)}/runs`, { method: "POST", body: params, headers: { "Idempotency-Key": uuid() } });
      ctx.go(`/runs/${encodeURIComponent(run.id)}`);
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  });
  return section("Run", form);
}

export async function renderJob(ctx) {
  const { main, params, session } = ctx;
  const name = params[0];
  const enc = encodeURIComponent(name);
  const [job, view] = await Promise.all([api(`/jobs/${enc}`), api(`/dashboard/jobs/${enc}`)]);
  if (!ctx.isCurrent()) return null;
  const head = h("div", { class: "page-head" }, h("h1", {}, "Job ", h("code", {}, name)));
  const pausedBadge = h("span", { id: "paused-state", class: view.paused ? "badge s-paused" : "badge s-succeeded" }, view.paused ? "paused" : "active");
  head.append(pausedBadge);
  if (session.canWrite) {
    const toggle = h("button", { type: "button", id: "pause-toggle" }, view.paused ? "Resume" : "Pause");
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      try {
        const paused = pausedBadge.textContent === "paused";
        const out = await api(`/jobs/${enc}/${paused ? "resume" : "pause"}`, { method: "POST" });
        pausedBadge.textContent = out.paused ? "paused" : "active";
        pausedBadge.className = out.paused ? "badge s-paused" : "badge s-succeeded";
        toggle.textContent = out.paused ? "Resume" : "Pause";
      } catch (err) {
        head.append(errorBox(err));
      } finally {
        toggle.disabled = false;
      }
    });
    head.append(toggle);
  }
  const runsBox = h("div", {});
  main.append(
    head,
    job.description ? h("p", {}, job.description) : null,
    section("Triggers", table("Triggers", ["Trigger", "When", "Next fires"], view.triggers.map((t) => ({ cells: [t.id, t.text, t.next.length ? h("ul", { class: "fires" }, t.next.map((at) => h("li", {}, when(at, t.timezone || "UTC")))) : "—"] })))),
    h("p", {}, "Target: ", h("code", {}, view.target), ` · defined by ${job.origin}`),
    session.canWrite ? runForm(ctx, job) : null,
    section("Runs", runsBox, link(`#/runs?job=${enc}`, "All runs of this job")),
    section("Definition", h("p", { class: "muted small" }, "Secrets are shown as ****."), pre(JSON.stringify(job, null, 2), { "aria-label": "Job definition (JSON)" })),
  );

  async function loadRuns() {
    try {
      const page = await api("/runs", { query: { job: name, limit: 20 } });
      if (!ctx.isCurrent()) return;
      runsBox.replaceChildren(table(`Runs of ${name}`, ["Run", "State", "Trigger", "Created", "Duration"], page.items.map((r) => ({ data: { run: r.id }, cells: [link(`#/runs/${encodeURIComponent(r.id)}`, r.id), badge(r.state), r.trigger, ago(r.created_at), r.finished_at ? `${Math.round((new Date(r.finished_at) - new Date(r.started_at || r.created_at)) / 100) / 10} s` : "—"] })), "No runs yet."));
    } catch (err) {
      runsBox.replaceChildren(errorBox(err));
    }
  }
  const missed = await ctx.firstRead(loadRuns, (doc) => doc.job === name);
  const refresh = throttle(loadRuns, 1000);
  const off = ctx.live((m) => {
    if (m.type === "gap" || m.doc.job === name) refresh();
  });
  if (missed) refresh();
  return off;
}
