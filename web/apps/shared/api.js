// The apps' thin client for the Patchwork API (Hearth, Felt): JSON requests with a web session
// (cookie + X-CSRF-Token) or a bearer token (an invite's short-lived token), and server-sent
// events read over fetch (query watches are POSTs, which EventSource cannot make).

/** An API error carrying the server's `{error: {code, message}}`. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** How a request authenticates: `{token}` (guest) or `{csrf}` (owner session). */
function headersFor(auth, method, hasBody) {
  const h = {};
  if (hasBody) h["Content-Type"] = "application/json";
  if (auth && auth.token) h.Authorization = `Bearer ${auth.token}`;
  else if (auth && auth.csrf && method !== "GET") h["X-CSRF-Token"] = auth.csrf;
  return h;
}

export async function api(method, path, body, auth, extraHeaders = {}) {
  const hasBody = body !== undefined;
  const r = await fetch(path, {
    method,
    headers: { ...headersFor(auth, method, hasBody), ...extraHeaders },
    body: hasBody ? JSON.stringify(body) : undefined,
    // A guest's token speaks alone: an owner cookie in the same browser must not mix in.
    credentials: auth && auth.token ? "omit" : "same-origin",
  });
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { raw: text }; }
  if (!r.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(r.status, e.code, e.message, e.details);
  }
  return data;
}

/** One SQL statement on a document: `{columns, rows}`. */
export function sql(db, statement, args, auth) {
  return api("POST", `/api/v1/db/${encodeURIComponent(db)}/query/exec`,
    { sql: statement, args: args || [] }, auth);
}

/** Rows as objects. */
export function objects(result) {
  const cols = result.columns || [];
  return (result.rows || []).map((row) => Object.fromEntries(cols.map((c, i) => [c, row[i]])));
}

/**
 * Reads an SSE response (GET or POST) and calls `onEvent(name, data)` for each event; reconnects
 * with a growing pause until `stop()` is called (`drop()` ends only the current connection). `onOpen(response)` sees each new stream.
 */
export function stream(path, { method = "GET", body, auth, onEvent, onOpen, onDown }) {
  const ctl = { stopped: false, abort: null };
  let pause = 500;
  async function once() {
    const ac = new AbortController();
    ctl.abort = ac;
    const r = await fetch(path, {
      method,
      headers: { Accept: "text/event-stream", ...headersFor(auth, method, body !== undefined) },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: auth && auth.token ? "omit" : "same-origin",
      signal: ac.signal,
    });
    if (!r.ok) {
      let e = {};
      try { e = (await r.json()).error || {}; } catch { /* not JSON */ }
      throw new ApiError(r.status, e.code, e.message);
    }
    if (onOpen) onOpen(r);
    pause = 500;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        let parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch { parsed = data.join("\n"); }
        onEvent(name, parsed);
      }
    }
  }
  (async () => {
    while (!ctl.stopped) {
      try {
        await once();
      } catch (e) {
        if (ctl.stopped) return;
        if (onDown) onDown(e);
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) return;
      }
      if (ctl.stopped) return;
      await new Promise((res) => setTimeout(res, pause));
      pause = Math.min(pause * 2, 10000);
    }
  })();
  return {
    stop() { ctl.stopped = true; if (ctl.abort) ctl.abort.abort(); },
    /** Drops the current connection (as a network blip would); the stream reconnects. */
    drop() { if (ctl.abort) ctl.abort.abort(); },
  };
}
