// The API client: the token (sessionStorage only), JSON calls, streamed text, and the live status
// stream read with fetch() so the token travels in the Authorization header, never in a URL.

const KEY = "jobwire.token";
export const API = "/api/v1";

export function getToken() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(KEY, token);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const info = (body && body.error) || {};
    super(info.message || `HTTP ${status}`);
    this.status = status;
    this.reason = info.reason || "";
    this.details = info.details || [];
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

const listeners = new Set();
/** Called with the ApiError of every 401, so the app can ask for a token again. */
export function onUnauthorized(fn) {
  listeners.add(fn);
}

async function failed(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  const err = new ApiError(res.status, body);
  if (res.status === 401) listeners.forEach((fn) => fn(err));
  return err;
}

/** GET/POST `path` under /api/v1 (`raw`: a path of the server's root, such as /readyz), answering
 * the parsed JSON; `accept` lists the error statuses whose body is an answer too (/readyz's 503). */
export async function api(path, { method = "GET", body, query, signal, headers: extra, raw = false, accept = [] } = {}) {
  const url = new URL(raw ? path : API + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const init = { method, headers: headers(extra), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(url, init);
  if (accept.includes(res.status)) return res.json();
  if (!res.ok) throw await failed(res);
  if (res.status === 204) return null;
  return res.json();
}

/** Read a text stream (a run's log), calling `onText` with each decoded chunk until it ends or
 * `signal` aborts. Resolves when the stream ends. */
export async function readText(path, onText, signal) {
  const res = await fetch(API + path, { headers: headers({ Accept: "text/plain" }), signal });
  if (!res.ok) throw await failed(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
}

/** The live status stream (/api/v1/stream, Server-Sent Events) read with fetch: reconnects on
 * its own after a drop, resuming with Last-Event-ID; `lagged` (documents missed) and every
 * reconnect are reported so pages re-read what they show. */
export class LiveStream {
  constructor({ onDoc, onState, onGap }) {
    this.onDoc = onDoc;
    this.onState = onState;
    this.onGap = onGap;
    this.lastId = null;
    this.stopped = false;
    this.controller = null;
    this.retry = 2000;
  }

  start() {
    this.stopped = false;
    this.loop();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async loop() {
    let first = true;
    while (!this.stopped) {
      this.controller = new AbortController();
      try {
        this.onState("connecting");
        const extra = { Accept: "text/event-stream" };
        if (this.lastId !== null) extra["Last-Event-ID"] = this.lastId;
        const res = await fetch(API + "/stream", { headers: headers(extra), signal: this.controller.signal });
        if (!res.ok) {
          const err = await failed(res);
          if (res.status === 401 || res.status === 403) {
            this.onState("unauthorized");
            return;
          }
          throw err;
        }
        this.onState("live");
        if (!first) this.onGap({ reason: "reconnected" });
        first = false;
        await this.read(res.body);
      } catch (e) {
        if (this.stopped) return;
      }
      if (this.stopped) return;
      this.onState("reconnecting");
      await new Promise((r) => setTimeout(r, this.retry));
    }
  }

  async read(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        this.frame(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
  }

  frame(text) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of text.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    }
    if (id !== null) this.lastId = id;
    if (!data.length) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    if (event === "lagged") this.onGap(parsed);
    else this.onDoc(parsed);
  }
}
