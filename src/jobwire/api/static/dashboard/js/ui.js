// Small DOM helpers: elements are built with textContent only (no innerHTML of data, so nothing
// the API returns can become markup), plus formatting shared by the pages.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

export function link(href, text, attrs) {
  return h("a", { href, ...attrs }, text);
}

export const STATES = ["queued", "pending", "running", "succeeded", "failed", "timed_out", "cancelled", "interrupted"];
export const OUTCOMES = ["run", "duplicate", "overlap", "filtered", "invalid", "paused"];

export function badge(state) {
  return h("span", { class: `badge s-${state}`, dataset: { state } }, String(state).replace("_", " "));
}

export function when(iso, zone) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const d = new Date(iso);
  const opts = zone ? { year: "numeric", month: "short", day: "numeric", weekday: "short", hour: "2-digit", minute: "2-digit", timeZone: zone, timeZoneName: "short" } : { dateStyle: "medium", timeStyle: "medium" };
  let text;
  try {
    text = d.toLocaleString(undefined, opts);
  } catch {
    text = d.toLocaleString();
  }
  return h("time", { datetime: iso, title: iso }, text);
}

export function ago(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  const abs = Math.abs(s);
  const unit = abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.round(abs / 60), "min"] : abs < 86400 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), "d"];
  return s >= 0 ? `${unit[0]} ${unit[1]} ago` : `in ${unit[0]} ${unit[1]}`;
}

export function duration(run) {
  if (!run.started_at) return "—";
  const end = run.finished_at ? new Date(run.finished_at) : new Date();
  const s = (end - new Date(run.started_at)) / 1000;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.round(s / 60)} min`;
}

/** A table in a focusable, labelled scroll region (narrow screens scroll it sideways). */
export function table(label, columns, rows, empty = "Nothing here yet.") {
  const body = rows.length
    ? rows.map((r) => h("tr", { dataset: r.data || {} }, r.cells.map((c) => h("td", {}, c))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))];
  return h(
    "div",
    { class: "table-wrap", role: "region", "aria-label": label, tabindex: "0" },
    h("table", {}, h("caption", { class: "sr-only" }, label), h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, body)),
  );
}

export function errorBox(err) {
  const box = h("div", { class: "error", role: "alert" });
  if (err && err.status === 401) {
    box.append(h("strong", {}, "Not signed in. "), "This jobwire needs an API token: sign in with a token from JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS.");
  } else if (err && err.status === 403) {
    box.append(h("strong", {}, "Not allowed. "), `${err.message}. Sign in with a token that has the write scope.`);
  } else {
    box.append(h("strong", {}, "Error. "), (err && err.message) || String(err));
    if (err && err.details && err.details.length) box.append(h("ul", {}, err.details.map((d) => h("li", {}, `${d.path}: ${d.message}`))));
  }
  return box;
}

export function section(title, ...children) {
  const id = "h-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

export function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

export function pre(text, attrs) {
  return h("pre", { class: "code", tabindex: "0", ...attrs }, text);
}

/** Calls `fn` at most once per `ms` (trailing), for refreshes driven by the live stream. */
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  return () => {
    if (timer) {
      again = true;
      return;
    }
    fn();
    timer = setTimeout(function tick() {
      timer = null;
      if (again) {
        again = false;
        fn();
        timer = setTimeout(tick, ms);
      }
    }, ms);
  };
}
