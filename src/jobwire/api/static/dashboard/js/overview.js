// Overview: runs by state over the last hour or day, what runs now, recent failures, next fires,
// event rate per source, and the health of tasks, sources, sinks and target places (/readyz).

import { api } from "./api.js";
import { ago, badge, errorBox, h, link, section, STATES, svg, table, throttle, when } from "./ui.js";

const CHART_STATES = ["succeeded", "failed", "timed_out", "cancelled", "interrupted", "running", "pending", "queued"];

function chart(data) {
  const W = 600;
  const H = 160;
  const n = data.buckets.length;
  const max = Math.max(1, ...data.buckets.map((b) => Object.values(b.counts).reduce((a, c) => a + c, 0)));
  const bw = W / n;
  const total = Object.values(data.totals).reduce((a, c) => a + c, 0);
  const summary = total
    ? `${total} runs in the last ${data.window}: ` + STATES.filter((s) => data.totals[s]).map((s) => `${data.totals[s]} ${s.replace("_", " ")}`).join(", ")
    : `No runs in the last ${data.window}`;
  const bars = [];
  data.buckets.forEach((b, i) => {
    let y = H;
    const label = new Date(b.start).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    for (const s of CHART_STATES) {
      const c = b.counts[s] || 0;
      if (!c) continue;
      const bh = (c / max) * (H - 4);
      y -= bh;
      bars.push(svg("rect", { x: i * bw + 1, y, width: Math.max(1, bw - 2), height: bh, class: `bar s-${s}` }, svg("title", {}, `${label}: ${c} ${s.replace("_", " ")}`)));
    }
  });
  const figure = h(
    "figure",
    { class: "chart" },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary, preserveAspectRatio: "none" }, svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }), bars),
    h("figcaption", {}, summary),
  );
  const legend = h("ul", { class: "legend", "aria-label": "Runs by state" }, STATES.filter((s) => data.totals[s]).map((s) => h("li", {}, badge(s), ` ${data.totals[s]}`)));
  return [figure, legend];
}

function runRow(r) {
  return { data: { run: r.id }, cells: [link(`#/runs/${encodeURIComponent(r.id)}`, r.id), link(`#/jobs/${encodeURIComponent(r.job)}`, r.job), badge(r.state), ago(r.created_at)] };
}

function failureRow(r) {
  const err = r.error || {};
  const why = [err.reason, err.message].filter(Boolean).join(": ") || (r.exit_code !== null && r.exit_code !== undefined ? `exit code ${r.exit_code}` : "—");
  return { data: { run: r.id }, cells: [link(`#/runs/${encodeURIComponent(r.id)}`, r.id), link(`#/jobs/${encodeURIComponent(r.job)}`, r.job), badge(r.state), why, ago(r.finished_at || r.created_at)] };
}

// runs waiting for a place on their target (docs/operations.md, "Overload"): in memory and in the store
function backlogState(b) {
  if (b.read_error) return h("span", { class: "bad" }, "read-back failing");
  return b.waiting ? `${b.waiting} waiting` : h("span", { class: "ok" }, "no wait");
}

function backlogDetail(b) {
  const parts = [`${b.running} of ${b.limit} running`];
  if (b.waiting) parts.push(`${b.in_memory} in memory, ${b.in_store} in the store`);
  if (b.read_error) parts.push(`reading them back fails: ${b.read_error}`);
  return parts.join("; ");
}

function health(ready) {
  const rows = [
    ...(ready.sources || []).map((s) => ({ cells: [`source ${s.source}`, s.kind, s.connected ? h("span", { class: "ok" }, "connected") : h("span", { class: "bad" }, "disconnected"), s.last_error || `${s.messages} messages`] })),
    ...(ready.tasks || []).map((t) => ({ cells: [t.task, t.critical ? "critical task" : "task", t.state === "running" ? h("span", { class: "ok" }, "running") : h("span", { class: "bad" }, t.state), t.last_error || "—"] })),
    ...Object.entries(ready.launch_backlog || {}).map(([kind, b]) => ({ cells: [`launch backlog ${kind}`, "target places", backlogState(b), backlogDetail(b)] })),
  ];
  if (ready.store) rows.unshift({ cells: ["store writes", "store", ready.store.failing ? h("span", { class: "bad" }, "failing") : h("span", { class: "ok" }, "ok"), ready.store.last_error || `${ready.store.fires_pending} fires pending`] });
  return [
    h("p", { class: ready.status === "ready" ? "ok" : "bad", id: "readiness" }, ready.status === "ready" ? "Ready" : `Not ready: ${(ready.problems || []).join("; ")}`),
    table("Health of the store, sources, sinks and tasks", ["Part", "Kind", "State", "Detail"], rows),
  ];
}

export async function render(ctx) {
  const { main, query } = ctx;
  const span = query.get("window") === "day" ? "day" : "hour";
  const body = h("div", { class: "grid" });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), h("nav", { class: "tabs", "aria-label": "Time window" }, link("#/?window=hour", "Last hour", span === "hour" ? { "aria-current": "true" } : {}), link("#/?window=day", "Last day", span === "day" ? { "aria-current": "true" } : {}))),
    body,
  );

  async function load() {
    let data;
    let ready;
    try {
      [data, ready] = await Promise.all([api("/dashboard/overview", { query: { window: span } }), api("/readyz", { raw: true, accept: [503] })]);
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    if (!ctx.isCurrent()) return;
    const rates = data.sources.map((s) => ({ cells: [s.source, String(s.total), `${s.per_minute}/min`, Object.entries(s.outcomes).map(([o, c]) => `${c} ${o}`).join(", ")] }));
    body.replaceChildren(
      section(`Runs in the last ${span}`, ...chart(data), h("p", { class: "muted" }, `${data.jobs} jobs, ${data.paused} paused.`)),
      section("Running now", table("Running now", ["Run", "Job", "State", "Created"], data.running.map(runRow), "Nothing is running.")),
      section("Recent failures", table("Recent failures", ["Run", "Job", "State", "Why", "When"], data.failures.map(failureRow), "No failures in the last 7 days.")),
      section("Next fires", table("Next fires", ["Job", "Trigger", "At"], data.next_fires.map((f) => ({ cells: [link(`#/jobs/${encodeURIComponent(f.job)}`, f.job), f.trigger, h("span", {}, when(f.at), " (", ago(f.at), ")")] })), "No time triggers are scheduled.")),
      section("Events per source (last hour)", table("Events per source", ["Source", "Events", "Rate", "Outcomes"], rates, "No events in the last hour.")),
      section("Health", ...health(ready)),
    );
  }

  const missed = await ctx.firstRead(load);
  const refresh = throttle(load, 1000);
  const timer = setInterval(load, 30000); // the clock moves the window even when nothing happens
  const off = ctx.live(() => refresh());
  if (missed) refresh();
  return () => {
    off();
    clearInterval(timer);
  };
}
