// The dashboard's shell: hash routing, sign-in, what the token may do, and the live stream that
// every page listens to.

import { api, ApiError, getToken, LiveStream, onUnauthorized, setToken } from "./api.js";
import { errorBox, h } from "./ui.js";
import * as overview from "./overview.js";
import * as jobs from "./jobs.js";
import * as runs from "./runs.js";
import * as events from "./events.js";

const main = document.getElementById("main");
const liveEl = document.getElementById("live");
const whoEl = document.getElementById("who");
const signOut = document.getElementById("signout");

const ROUTES = [
  [/^\/$/, overview.render, "Overview"],
  [/^\/jobs$/, jobs.renderList, "Jobs"],
  [/^\/jobs\/([^/]+)$/, jobs.renderJob, "Job"],
  [/^\/runs$/, runs.renderList, "Runs"],
  [/^\/runs\/([^/]+)$/, runs.renderRun, "Run"],
  [/^\/events$/, events.renderList, "Events"],
  [/^\/events\/([^/]+)$/, events.renderEvent, "Event"],
];

const session = { scopes: [], auth: false, canWrite: false };
const subscribers = new Set();
let cleanup = null;
let stream = null;
let generation = 0;

function live(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

/** A page's first read (`load`) with the stream already heard: answers whether a status document
 * (`accept`ed) or a gap arrived meanwhile. The server may have answered before that change, and the
 * page subscribes for good only once the read is shown, so it must read once more then. */
async function firstRead(load, accept = () => true) {
  let missed = false;
  const off = live((m) => {
    if (m.type === "gap" || accept(m.doc)) missed = true;
  });
  try {
    await load();
  } finally {
    off();
  }
  return missed;
}

function setLive(state) {
  const text = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", unauthorized: "Not live (sign in)" }[state] || state;
  liveEl.textContent = text;
  liveEl.dataset.state = state;
}

function startStream() {
  if (stream) stream.stop();
  stream = new LiveStream({
    onDoc: (doc) => subscribers.forEach((fn) => fn({ type: "status", doc })),
    onGap: (gap) => subscribers.forEach((fn) => fn({ type: "gap", gap })),
    onState: setLive,
  });
  stream.start();
}

function parseHash() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(1) : "/";
  const [path, qs] = raw.split("?");
  return { path, query: new URLSearchParams(qs || "") };
}

export function go(path, query) {
  const qs = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString() : "";
  location.hash = "#" + path + (qs ? "?" + qs : "");
}

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor (skip link)
  const mine = ++generation;
  if (cleanup) {
    try {
      cleanup();
    } catch {
      /* a page's cleanup must not stop the next page */
    }
    cleanup = null;
  }
  const { path, query } = parseHash();
  for (const link of document.querySelectorAll("nav.main a")) {
    const target = link.getAttribute("href").slice(1);
    const current = target === "/" ? path === "/" : path === target || path.startsWith(target + "/");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const found = ROUTES.find(([re]) => re.test(path));
  main.replaceChildren();
  if (!found) {
    document.title = "Not found · jobwire";
    main.append(h("h1", {}, "Not found"), h("p", {}, "There is no page at this address. "), h("a", { href: "#/" }, "Go to the overview"));
    return;
  }
  const [re, render, title] = found;
  const params = path.match(re).slice(1).map(decodeURIComponent);
  document.title = `${title} · jobwire`;
  const ctx = { main, params, query, session, live, firstRead, go, isCurrent: () => mine === generation };
  let done = null;
  try {
    done = (await render(ctx)) || null;
  } catch (err) {
    if (mine === generation) main.append(errorBox(err));
    return;
  }
  if (mine !== generation) {
    if (done) done(); // the person moved on while this page loaded: stop its stream and log
    return;
  }
  cleanup = done;
}

function showSignIn(message) {
  if (stream) stream.stop();
  setLive("unauthorized");
  whoEl.textContent = "";
  signOut.hidden = true;
  document.title = "Sign in · jobwire";
  main.replaceChildren();
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true, "aria-describedby": "token-help" });
  const status = h("p", { id: "signin-status", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to jobwire"),
    h("p", { id: "token-help" }, "This jobwire needs an API token (one of JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS). It is kept for this browser tab only and sent as a bearer header."),
    h("label", { for: "token" }, "API token"),
    input,
    status,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    status.textContent = "Checking…";
    try {
      await start();
    } catch (err) {
      setToken("");
      status.textContent = err instanceof ApiError && err.status === 401 ? "That token is not valid here: check it and try again." : `Could not sign in: ${err.message}`;
      input.focus();
    }
  });
  main.append(form);
  input.focus();
}

async function start() {
  const who = await api("/whoami");
  session.auth = who.auth;
  session.scopes = who.scopes;
  session.canWrite = who.scopes.includes("write");
  document.body.dataset.scope = session.canWrite ? "write" : "read";
  whoEl.textContent = who.auth ? (session.canWrite ? "Signed in (read and write)" : "Signed in (read only)") : "Open access (local)";
  signOut.hidden = !who.auth;
  startStream();
  await route();
}

onUnauthorized(() => {
  // signed in, then refused (the token was revoked, or the server restarted with other tokens)
  if (session.scopes.length) {
    session.scopes = [];
    session.canWrite = false;
    setToken("");
    showSignIn("Your token was refused (revoked, or jobwire restarted with other tokens): sign in again.");
  }
});

signOut.addEventListener("click", () => {
  setToken("");
  session.scopes = [];
  session.canWrite = false;
  showSignIn("Signed out.");
});

window.addEventListener("hashchange", () => {
  if (session.scopes.length) route();
});

start().catch((err) => {
  if (err instanceof ApiError && err.status === 401) showSignIn("");
  else {
    main.replaceChildren(errorBox(err));
  }
});
