// Runs: the filtered, paged list, and a run's page (timeline, causing event and payload, attempts,
// exit code / HTTP status / Job status, error, the log followed live, cancel and rerun).

import { api, readText } from "./api.js";
import { pager } from "./jobs.js";
import { badge, dl, duration, errorBox, h, link, pre, section, STATES, table, throttle, when } from "./ui.js";

const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "interrupted"]);

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function field(id, label, input) {
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

export async function renderList(ctx) {
  const { main, query, go } = ctx;
  const f = { job: query.get("job") || "", state: query.get("state") || "", trigger: query.get("trigger") || "", since: query.get("since") || "", until: query.get("until") || "" };
  const cursor = query.get("cursor") || "";
  const job = h("input", { id: "f-job", name: "job", value: f.job, autocomplete: "off" });
  const state = h("select", { id: "f-state", name: "state" }, h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s, selected: s === f.state }, s.replace("_", " "))));
  const trigger = h("input", { id: "f-trigger", name: "trigger", value: f.trigger, autocomplete: "off" });
  const since = h("input", { id: "f-since", name: "since", type: "datetime-local", value: toLocalInput(f.since) });
  const until = h("input", { id: "f-until", name: "until", type: "datetime-local", value: toLocalInput(f.until) });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter runs" }, field("f-job", "Job", job), field("f-state", "State", state), field("f-trigger", "Trigger", trigger), field("f-since", "Created from", since), field("f-until", "Created before", until), h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const iso = (v) => (v ? new Date(v).toISOString() : "");
    go("/runs", { job: job.value.trim(), state: state.value, trigger: trigger.value.trim(), since: iso(since.value), until: iso(until.value) });
  });
  const body = h("div", {});
  main.append(h("h1", {}, "Runs"), form, body);

  async function load() {
    let page;
    try {
      page = await api("/runs", { query: { ...f, cursor, limit: 50 } });
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    if (!ctx.isCurrent()) return;
    const rows = page.items.map((r) => ({
      data: { run: r.id, state: r.state },
      cells: [link(`#/runs/${encodeURIComponent(r.id)}`, r.id), link(`#/jobs/${encodeURIComponent(r.job)}`, r.job), badge(r.state), r.trigger, when(r.created_at), duration(r), r.error ? r.error.message : r.exit_code ?? r.http_status ?? "—"],
    }));
    body.replaceChildren(table("Runs", ["Run", "Job", "State", "Trigger", "Created", "Duration", "Result"], rows, "No runs match."), pager("/runs", f, cursor, page.next_cursor));
  }
  // new runs and state changes show up on the first page; an older page stays as it was read
  const missed = await ctx.firstRead(load);
  const refresh = throttle(() => (cursor ? null : load()), 1000);
  const off = ctx.live(refresh);
  if (missed) refresh();
  return off;
}

function timeline(run) {
  return h(
    "ol",
    { class: "timeline", "aria-label": "State history" },
    run.history.map((t) => h("li", { dataset: { state: t.state } }, badge(t.state), " ", when(t.at), t.attempt > 1 ? ` · attempt ${t.attempt}` : "", t.reason ? h("div", { class: "muted small" }, t.reason) : null)),
  );
}

function facts(run) {
  const err = run.error;
  return dl([
    ["Job", link(`#/jobs/${encodeURIComponent(run.job)}`, run.job)],
    ["Trigger", run.trigger],
    ["Attempt", String(run.attempt)],
    ["Created", when(run.created_at)],
    run.scheduled_at && ["Scheduled for", when(run.scheduled_at)],
    ["Started", when(run.started_at)],
    ["Finished", when(run.finished_at)],
    ["Duration", duration(run)],
    run.exit_code !== null && run.exit_code !== undefined && ["Exit code", h("span", { id: "exit-code" }, String(run.exit_code))],
    run.http_status !== null && run.http_status !== undefined && ["HTTP status", String(run.http_status)],
    run.target_ref && ["Target", run.target_ref],
    Object.keys(run.target_status || {}).length && ["Target status", pre(JSON.stringify(run.target_status, null, 2))],
    err && ["Error", h("div", { class: "error-block", id: "run-error" }, h("div", {}, err.message), h("div", { class: "muted small" }, `reason: ${err.reason ?? "—"} · code: ${err.code ?? "—"}`))],
    Object.keys(run.params || {}).length && ["Parameters", pre(JSON.stringify(run.params, null, 2), { "aria-label": "Parameters (secrets masked)" })],
  ]);
}

export async function renderRun(ctx) {
  const { main, params, session, go } = ctx;
  const id = params[0];
  const enc = encodeURIComponent(id);
  let run = await api(`/runs/${enc}`);
  if (!ctx.isCurrent()) return null;
  const stateBadge = h("span", { id: "run-state", "aria-live": "polite" }, badge(run.state));
  const actions = h("div", { class: "actions" });
  const message = h("div", { "aria-live": "polite" });
  const factsBox = h("div", {}, facts(run));
  const timelineBox = h("div", {}, timeline(run));
  const eventBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const log = h("pre", { class: "code log", id: "log", role: "log", tabindex: "0", "aria-label": "Run log" });
  const logState = h("p", { class: "muted small", id: "log-state", "aria-live": "polite" });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Run ", h("code", {}, id)), stateBadge, actions),
    message,
    section("Details", factsBox),
    section("Timeline", timelineBox),
    section("Log", logState, log),
    section("Causing event", eventBox),
  );

  function renderActions() {
    actions.replaceChildren();
    if (!session.canWrite) return;
    if (!TERMINAL.has(run.state)) {
      const cancel = h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel run");
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try {
          run = await api(`/runs/${enc}/cancel`, { method: "POST" });
          update();
        } catch (err) {
          message.replaceChildren(errorBox(err));
          cancel.disabled = false;
        }
      });
      actions.append(cancel);
    }
    const rerun = h("button", { type: "button", id: "rerun" }, "Run again");
    rerun.addEventListener("click", async () => {
      rerun.disabled = true;
      try {
        const next = await api(`/runs/${enc}/rerun`, { method: "POST" });
        go(`/runs/${encodeURIComponent(next.id)}`);
      } catch (err) {
        message.replaceChildren(errorBox(err));
        rerun.disabled = false;
      }
    });
    actions.append(rerun);
  }

  function update() {
    stateBadge.replaceChildren(badge(run.state));
    factsBox.replaceChildren(facts(run));
    timelineBox.replaceChildren(timeline(run));
    renderActions();
  }
  renderActions();

  api(`/events/${encodeURIComponent(run.event_id)}`)
    .then((lin) => {
      const ev = lin.event;
      eventBox.replaceChildren(
        dl([
          ["Event", link(`#/events/${encodeURIComponent(ev.id)}`, ev.id)],
          ["Source", ev.source],
          ["Received", when(ev.received_at)],
          ["Outcome", ev.outcome],
          ev.input_location && ["Input location", ev.input_location],
        ]),
        h("h3", {}, "Payload"),
        ev.payload === null || ev.payload === undefined ? h("p", { class: "muted" }, "No payload.") : pre(JSON.stringify(ev.payload, null, 2), { "aria-label": "Event payload" }),
      );
    })
    .catch((err) => eventBox.replaceChildren(errorBox(err)));

  const aborter = new AbortController();
  const follow = !TERMINAL.has(run.state);
  logState.textContent = follow ? "Following the log live…" : "";
  readText(
    `/runs/${enc}/log${follow ? "?follow=true" : ""}`,
    (text) => {
      if (!text) return;
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(text);
      if (atEnd) log.scrollTop = log.scrollHeight;
    },
    aborter.signal,
  )
    .then(() => {
      logState.textContent = log.textContent ? "End of the log." : "The log is empty.";
      logState.dataset.done = "1";
    })
    .catch((err) => {
      if (err.name !== "AbortError") logState.replaceChildren(errorBox(err));
    });

  const refresh = throttle(async () => {
    try {
      run = await api(`/runs/${enc}`);
      if (ctx.isCurrent()) update();
    } catch (err) {
      message.replaceChildren(errorBox(err));
    }
  }, 300);
  const off = ctx.live((m) => {
    if (m.type === "gap" || m.doc.run_id === id) refresh();
  });
  // a change published between the first read and the subscription above is read now
  if (!TERMINAL.has(run.state)) refresh();
  return () => {
    off();
    aborter.abort();
  };
}

export { TERMINAL };
