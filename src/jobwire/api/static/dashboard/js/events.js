// Events with lineage: every event and the run it made, or why it made none (duplicate → the
// existing run, overlap, paused, filtered, invalid with its problems).

import { api } from "./api.js";
import { pager } from "./jobs.js";
import { badge, dl, errorBox, h, link, OUTCOMES, pre, section, table, throttle, when } from "./ui.js";

const WHY = {
  duplicate: "Duplicate: its run key already had a run",
  overlap: "Overlap: skipped by the job's concurrency policy",
  filtered: "Filtered: the trigger's filter did not match",
  invalid: "Invalid: its payload or parameters were invalid",
  paused: "Paused: the job was paused",
};

function outcome(o) {
  return h("span", { class: `badge o-${o}`, dataset: { outcome: o } }, o);
}

function made(ev) {
  if (ev.outcome === "run" && ev.run_id) return link(`#/runs/${encodeURIComponent(ev.run_id)}`, ev.run_id);
  const why = h("span", { class: "why" }, ev.reason || WHY[ev.outcome] || ev.outcome);
  if (ev.outcome === "duplicate" && ev.run_id) return h("span", {}, why, " → ", link(`#/runs/${encodeURIComponent(ev.run_id)}`, ev.run_id, { "aria-label": `existing run ${ev.run_id}` }));
  return why;
}

export async function renderList(ctx) {
  const { main, query, go } = ctx;
  const f = { job: query.get("job") || "", outcome: query.get("outcome") || "" };
  const cursor = query.get("cursor") || "";
  const job = h("input", { id: "e-job", name: "job", value: f.job, autocomplete: "off" });
  const sel = h("select", { id: "e-outcome", name: "outcome" }, h("option", { value: "" }, "any"), OUTCOMES.map((o) => h("option", { value: o, selected: o === f.outcome }, o)));
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter events" },
    h("div", { class: "field" }, h("label", { for: "e-job" }, "Job"), job),
    h("div", { class: "field" }, h("label", { for: "e-outcome" }, "Outcome"), sel),
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("/events", { job: job.value.trim(), outcome: sel.value });
  });
  const body = h("div", {});
  main.append(h("h1", {}, "Events"), h("p", { class: "muted" }, "Every event jobwire received, and the run it made — or why it made none."), form, body);

  async function load() {
    let page;
    try {
      page = await api("/events", { query: { ...f, cursor, limit: 50 } });
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    if (!ctx.isCurrent()) return;
    const rows = page.items.map((ev) => ({
      data: { event: ev.id, outcome: ev.outcome },
      cells: [link(`#/events/${encodeURIComponent(ev.id)}`, ev.id), ev.job ? link(`#/jobs/${encodeURIComponent(ev.job)}`, ev.job) : h("span", { class: "muted" }, "(no job)"), ev.source, ev.trigger, when(ev.received_at), outcome(ev.outcome), made(ev)],
    }));
    body.replaceChildren(table("Events", ["Event", "Job", "Source", "Trigger", "Received", "Outcome", "Run, or why none"], rows, "No events match."), pager("/events", f, cursor, page.next_cursor));
  }
  const missed = await ctx.firstRead(load);
  const refresh = throttle(() => (cursor ? null : load()), 1000);
  const off = ctx.live(refresh);
  if (missed) refresh();
  return off;
}

export async function renderEvent(ctx) {
  const { main, params } = ctx;
  const id = params[0];
  const lin = await api(`/events/${encodeURIComponent(id)}`);
  if (!ctx.isCurrent()) return null;
  const ev = lin.event;
  const answer =
    ev.outcome === "run"
      ? h("p", { id: "lineage", class: "ok" }, "This event made a run.")
      : h(
          "div",
          { id: "lineage", class: "why-box", role: "note" },
          h("p", {}, h("strong", {}, WHY[ev.outcome] || ev.outcome)),
          lin.reason ? h("p", { id: "reason" }, lin.reason) : null,
          ev.outcome === "duplicate" && ev.run_id ? h("p", {}, "The run it would have made already exists: ", link(`#/runs/${encodeURIComponent(ev.run_id)}`, ev.run_id, { id: "existing-run" })) : null,
        );
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Event ", h("code", {}, id)), outcome(ev.outcome)),
    section("What it made", answer, lin.runs.length ? table("Runs of this event", ["Run", "Job", "State", "Created"], lin.runs.map((r) => ({ data: { run: r.id }, cells: [link(`#/runs/${encodeURIComponent(r.id)}`, r.id), r.job, badge(r.state), when(r.created_at)] }))) : null),
    section(
      "Details",
      dl([
        ["Job", ev.job ? link(`#/jobs/${encodeURIComponent(ev.job)}`, ev.job) : "(none)"],
        ["Trigger", ev.trigger],
        ["Source", ev.source],
        ["Received", when(ev.received_at)],
        ev.scheduled_at && ["Scheduled for", when(ev.scheduled_at)],
        ev.input_location && ["Input location", ev.input_location],
      ]),
    ),
    section("Payload", ev.payload === null || ev.payload === undefined ? h("p", { class: "muted" }, "No payload.") : pre(JSON.stringify(ev.payload, null, 2), { "aria-label": "Event payload" })),
  );
  return null;
}
