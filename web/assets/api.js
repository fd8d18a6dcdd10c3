// The public HTTP API, same-origin with the session cookie; unsafe methods carry X-CSRF-Token.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || null;
  }
}

const session = {
  csrf: null,
  onUnauthorized: null,
};

export function setCsrf(token) {
  session.csrf = token;
}

/** Called (once per 401) when a request finds the session gone. */
export function onUnauthorized(fn) {
  session.onUnauthorized = fn;
}

/** Reports a 401 seen outside `api()` (streams). */
export function unauthorized(err) {
  if (session.onUnauthorized) session.onUnauthorized(err);
}

/** The API's error shape → ApiError (or a generic one for non-JSON bodies). */
export async function toError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  if (body && body.error) {
    return new ApiError(res.status, body.error.code, body.error.message, body.error.details);
  }
  return new ApiError(res.status, `http_${res.status}`, res.statusText || "request failed");
}

export function headers(method, extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (method !== "GET" && method !== "HEAD" && session.csrf) h["X-CSRF-Token"] = session.csrf;
  return h;
}

/**
 * api("GET", "/api/v1/dbs") → parsed JSON (null for 204).
 * opts.quiet401: do not treat a 401 as "signed out" (sign-in calls).
 */
export async function api(method, path, body, opts = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: headers(method, body !== undefined ? { "Content-Type": "application/json" } : {}),
    signal: opts.signal,
  };
  if (body !== undefined) init.body = JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, "network_error", "Could not reach the Patchwork server. Check your connection and try again.");
  }
  if (res.ok) {
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }
  const err = await toError(res);
  if (res.status === 401 && !opts.quiet401 && session.onUnauthorized) session.onUnauthorized(err);
  throw err;
}

export const db = (id) => `/api/v1/db/${encodeURIComponent(id)}`;

export const DB_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

export function dbIdProblem(id) {
  if (!id) return "Enter a name.";
  if (id.length > 128) return "At most 128 characters.";
  if (!DB_ID_RE.test(id)) return "Use letters, digits, '.', '_' or '-' only.";
  if (id === "." || id === "..") return "'.' and '..' are not document names.";
  return null;
}

/**
 * Server-sent events from a fetch Response (POST streams such as query/watch), per the SSE spec:
 * fields event/data/id, multi-line data joined with "\n", comments ignored, blank line dispatches.
 */
export async function readSse(response, onEvent, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let event = { event: "", data: [], id: null };
  const dispatch = () => {
    if (event.data.length) {
      onEvent({ event: event.event || "message", data: event.data.join("\n"), id: event.id });
    }
    event = { event: "", data: [], id: null };
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let m;
      while ((m = /\r\n|\r|\n/.exec(buf))) {
        // A lone \r at the very end may be the first half of \r\n: wait for more.
        if (m[0] === "\r" && m.index === buf.length - 1) break;
        const line = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        if (line === "") {
          dispatch();
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.event = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  } catch (e) {
    if (!(signal && signal.aborted)) throw e;
  } finally {
    reader.releaseLock();
  }
}
