// FlowList: shared to-do lists on Patchwork's public API only.
// Hash routes: #/ (my lists, create), #/list/{db_id}, #/join/{invite token}.
// One document per list (`flowlist-{slug}`); schema.js holds the tables, the seed and the
// triggers. Who may write is decided by Patchwork's scopes (owner: everything, editor:
// query.write, viewer: read only), never by this page.

import { api, sql, objects, stream, ApiError } from "../shared/api.js";
import { h, fill, toast, initials } from "../shared/dom.js";
import { MIGRATIONS, EMOJI, STATE_SQL, scopesFor, roleOf, roomOf, streak } from "./schema.js";
import { powHeader } from "/apps/shared/pow.js";

const HEARTBEAT_MS = 10_000; // presence TTL is 30 s: three beats may be lost
const PRESENCE_TTL_S = 30;
const view = document.getElementById("view");
const whoami = document.getElementById("whoami");
const net = document.getElementById("net");
let me = null; // {subject, name, email, csrf_token}
let selfId = null; // what patchwork_caller() is for this person on the open list (their subject)
let cleanup = [];

// What the tests read: the state shown, when each change was first shown (ms), actions taken,
// refused writes, watch connections.
const probe = { state: null, seen: {}, actions: [], refusals: [], opens: 0, queue: 0, readOnly: false, net: [] };
window.flowlist = probe;
const seen = (key) => { if (!(key in probe.seen)) probe.seen[key] = Date.now(); };

// ---------- DOM helpers (h, fill, toast, initials: ../shared/dom.js) ----------
function mount(...kids) { fill(view, ...kids); }
function hue(s) { let x = 7; for (const c of s || "") x = (x * 31 + c.charCodeAt(0)) >>> 0; return x % 360; }
function avatar(name, id, extra = "") {
  const a = h("span", { class: `avatar ${extra}`.trim(), title: name, "aria-label": name }, initials(name));
  a.style.setProperty("--hue", hue(id || name));
  return a;
}
function slugify(name) {
  return name.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "list";
}
function uid() {
  const b = crypto.getRandomValues(new Uint8Array(9));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}
const enc = encodeURIComponent;
const today = () => new Date().toISOString().slice(0, 10);
function dueLabel(d) {
  if (!d) return null;
  const days = Math.round((Date.parse(`${d}T00:00:00Z`) - Date.parse(`${today()}T00:00:00Z`)) / 86400000);
  if (days === 0) return { text: "Today", cls: "today" };
  if (days === 1) return { text: "Tomorrow", cls: "soon" };
  if (days === -1) return { text: "Yesterday", cls: "late" };
  if (days < 0) return { text: `${-days} days late`, cls: "late" };
  if (days < 7) return { text: new Date(`${d}T12:00:00Z`).toLocaleDateString([], { weekday: "long" }), cls: "soon" };
  return { text: new Date(`${d}T12:00:00Z`).toLocaleDateString([], { month: "short", day: "numeric" }), cls: "" };
}
const isNetworkError = (e) => !(e instanceof ApiError);

// ---------- the session ----------
async function loadMe() {
  try { me = await api("GET", "/auth/me"); } catch { me = null; }
  whoami.replaceChildren();
  if (me) whoami.append(avatar(me.name || me.subject, me.subject), h("span", { id: "me-name" }, me.name || me.email || me.subject));
}
const auth = () => ({ csrf: me && me.csrf_token });
/** An API call with the session; a CSRF token gone stale (the session was rotated) is renewed once. */
async function call(method, path, body, extra) {
  try {
    return await api(method, path, body, auth(), extra);
  } catch (e) {
    if (e instanceof ApiError && e.code === "csrf_required") {
      await loadMe();
      return api(method, path, body, auth(), extra);
    }
    throw e;
  }
}
const exec = (db, statement, args) => call("POST", `/api/v1/db/${enc(db)}/query/exec`, { sql: statement, args: args || [] });
const batch = (db, statements) => call("POST", `/api/v1/db/${enc(db)}/query/batch`, { statements: statements.map(([s, a]) => ({ sql: s, args: a || [] })) });

// ---------- router ----------
async function route() {
  for (const stop of cleanup) { try { stop(); } catch { /* already stopped */ } }
  cleanup = [];
  const hash = location.hash.replace(/^#/, "") || "/";
  const [, page, arg] = hash.split("/");
  try {
    if (page === "list" && arg) await listView(decodeURIComponent(arg));
    else if (page === "join" && arg) await joinView(arg);
    else await homeView();
  } catch (e) {
    mount(errorCard(e, route));
  }
}
window.addEventListener("hashchange", route);

function errorCard(e, retry) {
  const msg = isNetworkError(e) ? "The server cannot be reached. Check your connection." : e.message;
  return h("section", { class: "card state-card", id: "error" },
    h("div", { class: "state-icon bad", "aria-hidden": "true" }, "!"),
    h("h2", {}, "Something went wrong"),
    h("p", { class: "muted" }, msg),
    retry ? h("button", { class: "btn", onclick: retry }, "Try again") : null);
}

// ---------- home: sign in, my lists, create ----------
async function homeView() {
  const pending = localStorage.getItem("flowlist.pendingInvite");
  if (me && pending) {
    localStorage.removeItem("flowlist.pendingInvite");
    location.hash = `#/join/${pending}`;
    return;
  }
  if (!me) {
    let methods = { oidc: false, token_login: true };
    try { methods = await api("GET", "/auth/methods"); } catch { /* keep defaults */ }
    mount(h("section", { class: "hero" },
      h("p", { class: "eyebrow" }, "Shared to-do lists"),
      h("h1", {}, "Lists you keep together, live."),
      h("p", { class: "lede" }, "Add, tick off and reorder tasks with the people you share them with. Everyone sees every change the moment it happens, and who else is looking."),
      signInLink(methods, "/apps/flowlist/")));
    return;
  }
  const grid = h("ul", { class: "lists", id: "my-lists", "aria-busy": "true" },
    [1, 2, 3].map(() => h("li", { class: "list-card skeleton" }, h("span"), h("span"))));
  mount(
    h("section", { class: "home-head" }, h("h1", {}, "My lists"), h("p", { class: "muted" }, "Lists you own or were invited to.")),
    grid,
    createForm());
  loadLists(grid).catch((e) => fill(grid, h("li", { class: "list-empty error" }, `Could not load your lists: ${e.message}`)));
}

function signInLink(methods, next) {
  return methods.oidc
    ? h("a", { class: "btn primary big", id: "signin", href: `/auth/login?next=${enc(next)}` }, "Sign in to start")
    : h("a", { class: "btn primary big", id: "signin", href: "/ui/" }, "Sign in on the dashboard, then come back");
}

async function loadLists(grid) {
  const { dbs } = await call("GET", "/api/v1/dbs");
  const mine = dbs.filter((d) => d.db_id.startsWith("flowlist-"));
  grid.removeAttribute("aria-busy");
  if (!mine.length) {
    fill(grid, h("li", { class: "list-empty" },
      h("div", { class: "state-icon", "aria-hidden": "true" }, "✓"),
      h("strong", {}, "No lists yet"),
      h("span", { class: "muted" }, "Create your first list below: it starts with a few sample tasks to play with.")));
    return;
  }
  const cards = await Promise.all(mine.map(async (d) => {
    try {
      const [l] = objects(await exec(d.db_id, `SELECT name, owner,
          (SELECT count(*) FROM tasks WHERE done = 0) AS open,
          (SELECT count(*) FROM tasks WHERE done = 1) AS done,
          (SELECT role FROM list_members WHERE subject = patchwork_caller()) AS role, owner = patchwork_caller() AS mine,
          (SELECT count(*) FROM list_members) AS people FROM lists WHERE id = 1`));
      const total = l.open + l.done;
      const bar = h("span", { class: "progress" }, h("span"));
      bar.firstChild.style.setProperty("--pct", `${total ? Math.round((100 * l.done) / total) : 0}%`);
      const role = l.mine ? "owner" : l.role || "member";
      return h("li", { class: "list-card" }, h("a", { href: `#/list/${enc(d.db_id)}`, class: "list-link", "data-db": d.db_id },
        h("span", { class: "list-name" }, l.name),
        h("span", { class: `chip role-${role}` }, role),
        h("span", { class: "muted small" }, `${l.open} open · ${l.done} done · ${l.people} ${l.people === 1 ? "person" : "people"}`),
        bar));
    } catch (e) {
      return h("li", { class: "list-card unavailable" }, h("span", { class: "list-name" }, d.db_id), h("span", { class: "muted small" }, `unavailable: ${e.message}`));
    }
  }));
  fill(grid, cards);
}

function createForm() {
  const err = h("p", { class: "error", role: "alert" });
  const input = h("input", { id: "list-name", name: "name", required: true, maxlength: 80, placeholder: "Groceries, Launch week, Move house…", autocomplete: "off" });
  const form = h("form", { class: "card create", id: "create-list" },
    h("h2", {}, "New list"),
    h("div", { class: "inline" }, input, h("button", { class: "btn primary", type: "submit", id: "create-btn" }, "Create")),
    err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const btn = form.querySelector("button");
    btn.disabled = true;
    btn.textContent = "Creating…";
    try {
      const db = await createList(input.value.trim());
      location.hash = `#/list/${enc(db)}`;
    } catch (e) {
      err.textContent = e.message;
      btn.disabled = false;
      btn.textContent = "Create";
    }
  });
  return form;
}

/**
 * Creates the list's document from the person's session (so they own it), applies the
 * migrations (schema, seed, triggers), then claims the seeded sample list: renamed, with the
 * person as owner instead of the demo person.
 */
export async function createList(name) {
  if (!name) throw new Error("Give the list a name.");
  const base = `flowlist-${slugify(name)}`;
  let db = null;
  for (const candidate of [base, `${base}-${uid().slice(0, 4)}`, `${base}-${uid().slice(0, 6)}`]) {
    try {
      const opened = await call("POST", `/api/v1/db/${candidate}/_open`);
      if (opened.created) { db = candidate; break; }
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 403)) throw e; // someone else's
    }
  }
  if (!db) throw new Error("That name is taken; try another.");
  await call("POST", `/api/v1/db/${db}/migrations`, { migrations: MIGRATIONS });
  await batch(db, [
    ["INSERT INTO profiles (subject, name) VALUES (patchwork_caller(), ?) ON CONFLICT (subject) DO UPDATE SET name = excluded.name", [me.name || me.email || me.subject]],
    ["UPDATE lists SET name = ?, owner = patchwork_caller(), created_at = unixepoch() WHERE id = 1", [name]],
    ["DELETE FROM list_members WHERE subject = 'demo'"],
    ["INSERT INTO list_members (subject, role) VALUES (patchwork_caller(), 'owner')"],
  ]);
  await call("PUT", `/api/v1/db/${db}/presence/${enc(roomOf(db))}/_config`, { ttl_secs: PRESENCE_TTL_S }).catch(() => {});
  return db;
}

// ---------- join by invite link ----------
function invitePayload(token) {
  try {
    const p = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(p + "===".slice((p.length + 3) % 4)), (c) => c.charCodeAt(0))));
  } catch { return null; }
}

async function joinView(token) {
  const info = invitePayload(token) || {};
  const role = roleOf(info.s);
  const title = info.r || "a FlowList list";
  if (!me) {
    localStorage.setItem("flowlist.pendingInvite", token);
    let methods = { oidc: false };
    try { methods = await api("GET", "/auth/methods"); } catch { /* defaults */ }
    mount(h("section", { class: "card join", id: "join-card" },
      h("p", { class: "eyebrow" }, "You're invited"),
      h("h1", {}, title),
      h("p", { class: "muted" }, `Sign in to join as ${role === "editor" ? "an editor" : "a viewer"}; you'll come straight back here.`),
      signInLink(methods, "/apps/flowlist/")));
    return;
  }
  const err = h("p", { class: "error", role: "alert", id: "join-error" });
  const btn = h("button", { class: "btn primary big", id: "join-btn" }, `Join as ${me.name || me.subject}`);
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    btn.textContent = "Joining…";
    err.textContent = "";
    try {
      const pow = await powHeader();
      const r = await call("POST", "/api/v1/invites/redeem", { token, member: (me.name || me.subject).slice(0, 64) }, { "Patch-PoW": pow });
      const db = r.db_id;
      if (roleOf(r.scopes) === "editor") {
        // An editor adds themself; a viewer (no query.write) is added by the owner's app.
        await batch(db, [
          ["INSERT INTO profiles (subject, name) VALUES (patchwork_caller(), ?) ON CONFLICT (subject) DO UPDATE SET name = excluded.name", [me.name || me.subject]],
          ["INSERT INTO list_members (subject, role) VALUES (patchwork_caller(), 'editor') ON CONFLICT (subject) DO NOTHING"],
        ]).catch(() => {});
      }
      location.hash = `#/list/${enc(db)}`;
    } catch (e) {
      err.textContent = e instanceof ApiError && e.code === "invalid_invite" ? `This invite does not work: ${e.message}` : e.message;
      btn.disabled = false;
      btn.textContent = "Try again";
    }
  });
  mount(h("section", { class: "card join", id: "join-card" },
    h("p", { class: "eyebrow" }, "You're invited"),
    h("h1", {}, title),
    h("p", { class: "muted" }, role === "editor" ? "You'll be able to add, edit, reorder and tick off tasks, comment and react." : "You'll follow the list live and see who's here; the owner can make you an editor later."),
    info.e ? h("p", { class: "muted small" }, `Link valid until ${new Date(info.e * 1000).toLocaleString()}`) : null,
    btn, err));
  btn.focus();
}

// ---------- edits: operations, applied at once on screen, sent in order, queued offline ----------
// Each operation is data (so the offline queue can live in localStorage) with its SQL and its
// effect on the state shown. Applying one to a state that already has it changes nothing, so
// an operation sent twice (a replay after a lost answer) is harmless: inserts carry their id
// and use ON CONFLICT DO NOTHING, updates set values.
const OPS = {
  addTask: {
    sql: (o) => [["INSERT INTO tasks (id, title, position, due_date, assignee) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", [o.id, o.title, o.position, o.due_date || null, o.assignee || null]]],
    local(s, o) {
      if (!s.tasks.some((t) => t.id === o.id)) s.tasks.push({ id: o.id, title: o.title, notes: "", done: 0, position: o.position, due_date: o.due_date || null, assignee: o.assignee || null, created_by: selfId, pending: true });
    },
  },
  editTask: {
    sql(o) {
      const cols = Object.keys(o.fields).filter((k) => ["title", "notes", "due_date", "assignee"].includes(k));
      return [[`UPDATE tasks SET ${cols.map((c) => `${c} = ?`).join(", ")} WHERE id = ?`, [...cols.map((c) => o.fields[c]), o.id]]];
    },
    local(s, o) { const t = s.tasks.find((x) => x.id === o.id); if (t) Object.assign(t, o.fields); },
  },
  setDone: {
    sql: (o) => [["UPDATE tasks SET done = ? WHERE id = ? AND done IS NOT ?", [o.done, o.id, o.done]]],
    local(s, o) { const t = s.tasks.find((x) => x.id === o.id); if (t) { if (t.done !== o.done && o.done) s.my_days_pending = true; t.done = o.done; } },
  },
  move: {
    sql: (o) => [["UPDATE tasks SET position = ? WHERE id = ?", [o.position, o.id]]],
    local(s, o) { const t = s.tasks.find((x) => x.id === o.id); if (t) t.position = o.position; },
  },
  deleteTask: {
    sql: (o) => [["DELETE FROM tasks WHERE id = ?", [o.id]]],
    local(s, o) { s.tasks = s.tasks.filter((t) => t.id !== o.id); },
  },
  addComment: {
    sql: (o) => [["INSERT INTO comments (id, task_id, body) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING", [o.id, o.task_id, o.body]]],
    local(s, o) {
      if (!s.comments.some((c) => c.id === o.id)) s.comments.push({ id: o.id, task_id: o.task_id, body: o.body, author: selfId, author_name: me.name || selfId, created_at: Date.now() / 1000, pending: true });
    },
  },
  deleteComment: {
    sql: (o) => [["DELETE FROM comments WHERE id = ?", [o.id]]],
    local(s, o) { s.comments = s.comments.filter((c) => c.id !== o.id); },
  },
  react: {
    sql: (o) => o.on
      ? [["INSERT INTO task_reactions (task_id, subject, emoji) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [o.task_id, selfId, o.emoji]]]
      : [["DELETE FROM task_reactions WHERE task_id = ? AND subject = ? AND emoji = ?", [o.task_id, selfId, o.emoji]]],
    local(s, o) {
      const same = (r) => r.task_id === o.task_id && r.subject === selfId && r.emoji === o.emoji;
      s.reactions = s.reactions.filter((r) => !same(r));
      if (o.on) s.reactions.push({ task_id: o.task_id, subject: selfId, emoji: o.emoji });
    },
  },
  renameList: {
    sql: (o) => [["UPDATE lists SET name = ? WHERE id = 1", [o.name]]],
    local(s, o) { if (s.list) s.list.name = o.name; },
  },
};

// ---------- the list ----------
async function listView(db) {
  if (!me) { location.hash = "#/"; return; }
  const room = roomOf(db);
  // Who the document sees (patchwork_caller()): reactions, streaks and "you" are keyed by it.
  selfId = me.subject;
  try {
    const r = await exec(db, "SELECT patchwork_caller()");
    if (r.rows && r.rows[0] && r.rows[0][0]) selfId = r.rows[0][0];
  } catch (e) {
    if (!isNetworkError(e)) throw e.status === 403 ? new Error("You don't have access to this list (ask its owner for an invite link).") : e;
  }
  const queueKey = `flowlist.queue.${db}`;
  const L = {
    server: null, // the last state the watch sent
    pending: [], // operations not yet confirmed: {op, status: queued|inflight|acked}
    open: new Set(), // task ids whose details are open
    readOnly: false,
    offline: !navigator.onLine,
    present: new Map(), // member -> {name, focus}
    isOwner: false,
    myRole: null,
  };
  // The room's 30 s TTL (presence forgets it after an hour without anyone, and at restart).
  call("PUT", `/api/v1/db/${enc(db)}/presence/${enc(room)}/_config`, { ttl_secs: PRESENCE_TTL_S }).catch(() => {});
  try { L.pending = JSON.parse(localStorage.getItem(queueKey) || "[]").map((op) => ({ op, status: "queued" })); } catch { L.pending = []; }
  const persist = () => {
    const waiting = L.pending.filter((p) => p.status !== "acked").map((p) => p.op);
    if (waiting.length) localStorage.setItem(queueKey, JSON.stringify(waiting)); else localStorage.removeItem(queueKey);
    probe.queue = waiting.length;
  };

  // Skeleton while the first snapshot comes.
  const title = h("h1", { id: "list-title", class: "list-title" }, h("span", { class: "skeleton-text" }));
  const streakBadge = h("span", { class: "streak", id: "streak", hidden: true });
  const faces = h("ul", { class: "faces", id: "presence", "aria-label": "Here now" });
  const membersBtn = h("button", { class: "btn", id: "members-btn", "aria-haspopup": "dialog" }, "Members");
  const shareBtn = h("button", { class: "btn primary", id: "share-btn", hidden: true }, "Share");
  const banner = h("div", { class: "banner", id: "status", role: "status", hidden: true });
  const newInput = h("input", { id: "new-task", maxlength: 300, placeholder: "Add a task…", autocomplete: "off", "aria-label": "New task" });
  const addForm = h("form", { class: "add", id: "add-task" }, h("span", { class: "plus", "aria-hidden": "true" }, "+"), newInput,
    h("button", { class: "btn primary", type: "submit", id: "add-btn" }, "Add"));
  const openList = h("ol", { class: "tasks", id: "tasks", "aria-label": "Open tasks" },
    [1, 2, 3, 4].map(() => h("li", { class: "task skeleton" }, h("span"))));
  const emptyState = h("div", { class: "empty", id: "empty", hidden: true },
    h("div", { class: "state-icon", "aria-hidden": "true" }, "✓"), h("strong", {}, "All clear"), h("span", { class: "muted" }, "Nothing left to do. Add a task above, or enjoy it."));
  const doneCount = h("span", { class: "count" }, "0");
  const doneList = h("ol", { class: "tasks done-list", id: "done-tasks", "aria-label": "Done tasks" });
  const doneSection = h("details", { class: "done-section", id: "done-section", hidden: true }, h("summary", {}, "Done ", doneCount), doneList);
  const sheet = h("aside", { class: "sheet", id: "sheet", role: "dialog", "aria-modal": "false", "aria-labelledby": "sheet-title", hidden: true });
  const scrim = h("div", { class: "scrim", hidden: true, onclick: () => closeSheet() });

  mount(h("section", { class: "list-view", id: "list-view" },
    h("header", { class: "list-head" },
      h("div", { class: "list-head-main" },
        h("a", { class: "back muted small", href: "#/" }, "← My lists"),
        h("div", { class: "title-row" }, title, streakBadge)),
      h("div", { class: "head-tools" }, faces, membersBtn, shareBtn)),
    banner,
    addForm,
    openList, emptyState, doneSection,
    h("p", { class: "kbd-help muted small" }, "Keyboard: ↑/↓ move between tasks · Alt+↑/↓ reorder · Space done · Enter details · F2 rename")),
  scrim, sheet);

  // ----- state shown = the server's + pending operations -----
  const shown = () => {
    if (!L.server) return null;
    const s = structuredClone(L.server);
    for (const p of L.pending) OPS[p.op.type].local(s, p.op);
    return s;
  };
  const myRole = (s) => {
    if (s.list && s.list.owner === selfId) return "owner";
    const m = s.members.find((x) => x.subject === selfId);
    return m ? m.role : null;
  };

  // ----- the banner: offline queue, read-only -----
  const drawBanner = () => {
    const waiting = L.pending.filter((p) => p.status !== "acked").length;
    const parts = [];
    banner.className = "banner";
    if (L.offline) {
      banner.classList.add("offline");
      parts.push(h("span", { class: "dot", "aria-hidden": "true" }),
        h("strong", { id: "offline-note" }, `Offline — ${waiting} ${waiting === 1 ? "change" : "changes"} waiting`),
        h("span", { class: "muted small" }, "They are kept on this device and sent when you're back."));
    } else if (waiting && L.pending.some((p) => p.replaying)) {
      parts.push(h("strong", {}, `Sending ${waiting} ${waiting === 1 ? "change" : "changes"}…`));
    }
    if (L.readOnly) {
      banner.classList.add("readonly");
      parts.push(h("i", { class: "ico lock", "aria-hidden": "true" }),
        h("strong", { id: "readonly-note" }, "View only"),
        h("span", { class: "muted small" }, L.readOnlyWhy || "You can follow this list but not change it."));
    }
    fill(banner, parts);
    banner.hidden = parts.length === 0;
    net.hidden = !L.offline;
    net.textContent = L.offline ? `offline · ${waiting}` : "";
    const lv = document.getElementById("list-view");
    if (lv) lv.classList.toggle("readonly", L.readOnly);
    probe.readOnly = L.readOnly;
    addForm.hidden = L.readOnly;
  };

  const enterReadOnly = (why) => {
    const was = L.readOnly;
    L.readOnly = true;
    L.readOnlyWhy = why;
    if (!was) toast(why, true);
    render();
  };

  // ----- sending operations in order -----
  let pumping = false;
  async function pump() {
    if (pumping) return;
    pumping = true;
    try {
      for (;;) {
        if (L.offline) break;
        const next = L.pending.find((p) => p.status === "queued");
        if (!next) break;
        next.status = "inflight";
        const stmts = OPS[next.op.type].sql(next.op);
        try {
          if (stmts.length === 1) await exec(db, stmts[0][0], stmts[0][1]); else await batch(db, stmts);
          next.status = "acked";
          next.ackedAt = Date.now();
        } catch (e) {
          if (isNetworkError(e)) { next.status = "queued"; setOffline(true); break; }
          L.pending.splice(L.pending.indexOf(next), 1);
          probe.refusals.push({ type: next.op.type, status: e.status, code: e.code, at: Date.now() });
          if (e.status === 403) {
            // Refused by Patchwork's scopes: this person may no longer write here. What is
            // still queued would be refused too.
            const dropped = L.pending.filter((p) => p.status === "queued").length;
            L.pending = L.pending.filter((p) => p.status !== "queued");
            enterReadOnly(`Your change was refused: you can only view this list now${dropped ? ` (${dropped} more waiting changes dropped)` : ""}.`);
          } else if (e.status === 401) {
            toast("Your session ended: sign in again.", true);
          } else {
            toast(`Not saved: ${e.message}`, true);
          }
        }
        persist();
        render();
      }
    } finally {
      pumping = false;
      persist();
      drawBanner();
    }
  }
  /** Makes an edit: shown at once, then sent (or kept for later while offline). */
  function act(op) {
    if (L.readOnly) { toast("This list is view only for you.", true); return; }
    op.at = Date.now();
    probe.actions.push({ type: op.type, t0: op.at, key: op.key });
    L.pending.push({ op, status: "queued" });
    persist();
    render();
    pump();
  }

  /** `reconnect`: the live view is down too; reconnect it now rather than after its back-off. */
  function setOffline(off, reconnect = false) {
    if (L.offline === off) return;
    probe.net.push({ offline: off, at: Date.now() });
    L.offline = off;
    drawBanner();
    if (!off) {
      for (const p of L.pending) if (p.status === "queued") p.replaying = true;
      if (reconnect && watch) watch.drop();
      pump();
    }
  }
  const onOnline = () => setOffline(false, true);
  const onOffline = () => setOffline(true);
  window.addEventListener("online", onOnline);
  window.addEventListener("offline", onOffline);
  // A request that failed without an answer counts as offline until one succeeds again.
  const retry = setInterval(() => {
    if (L.offline && navigator.onLine) {
      fetch("/healthz", { cache: "no-store" }).then((r) => { if (r.ok) setOffline(false, true); }).catch(() => {});
    }
  }, 3000);
  cleanup.push(() => window.removeEventListener("online", onOnline), () => window.removeEventListener("offline", onOffline), () => clearInterval(retry));

  // ----- the live view: one query watch for the whole list -----
  let first = true;
  // The CSRF token is read at each (re)connection: a rotated session gets a new one.
  const liveAuth = { get csrf() { return me && me.csrf_token; } };
  let watch = null;
  const startWatch = () => { watch = stream(`/api/v1/db/${enc(db)}/query/watch`, {
    method: "POST", auth: liveAuth,
    body: { sql: STATE_SQL, args: [selfId], options: { heartbeat_seconds: 10 } },
    onOpen() { probe.opens += 1; if (L.offline) setOffline(false); },
    onEvent(name, data) {
      if (name !== "snapshot" && name !== "update") return;
      const raw = data.rows && data.rows[0] && data.rows[0][0];
      if (!raw) return;
      const s = JSON.parse(raw);
      for (const k of ["tasks", "comments", "reactions", "members", "profiles", "team_days", "my_days"]) s[k] = s[k] || [];
      if (!s.list) { mount(errorCard(new Error("This document is not a FlowList list."))); return; }
      const before = L.server;
      L.server = s;
      // Confirmed operations are in the server's state now.
      L.pending = L.pending.filter((p) => !(p.status === "acked"));
      onRoles(before, s);
      render();
      if (first) { first = false; onFirstState(s); }
    },
    onDown(e) {
      if (e && e.name === "AbortError") return; // we dropped it (to reconnect at once)
      if (isNetworkError(e)) setOffline(true);
      else if (e.code === "csrf_required") loadMe().then(() => { watch.stop(); startWatch(); });
      else if (e.status === 403 || e.status === 401) mount(errorCard(new Error("You no longer have access to this list.")));
    },
  }); };
  startWatch();
  cleanup.push(() => watch.stop());

  function onRoles(before, s) {
    const role = myRole(s);
    L.isOwner = role === "owner";
    const was = L.myRole;
    L.myRole = role;
    if (was && role && was !== role) {
      toast(`Your role on this list is now ${role}.`);
      // Upgraded: check with the server (a write that changes nothing) before unlocking.
      if (L.readOnly && role !== "viewer") probeWrite();
    }
    // The owner's app adds invited people that cannot add themselves (viewers).
    if (L.isOwner && before && s.members.length !== before.members.length) reconcile();
  }

  async function probeWrite() {
    try {
      await exec(db, "UPDATE lists SET id = id WHERE 0");
      if (L.readOnly) { L.readOnly = false; L.readOnlyWhy = null; toast("You can edit this list again."); render(); }
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {
        L.readOnly = true;
        L.readOnlyWhy = "You are a viewer of this list: you can follow it, not change it.";
        render();
        return false;
      }
      return null;
    }
  }

  async function onFirstState(s) {
    await migrateUp();
    if (myRole(s) !== "owner") await probeWrite();
    if (L.isOwner) reconcile();
    else if (!L.readOnly) {
      // Keep your name current and make sure you are listed (an editor who joined earlier).
      batch(db, [
        ["INSERT INTO profiles (subject, name) VALUES (?, ?) ON CONFLICT (subject) DO UPDATE SET name = excluded.name WHERE name IS NOT excluded.name", [selfId, me.name || selfId]],
        ["INSERT INTO list_members (subject, role) VALUES (?, 'editor') ON CONFLICT (subject) DO NOTHING", [selfId]],
      ]).catch(() => {});
    }
    pump();
  }

  /** New versions of the schema reach older lists when their owner opens them. */
  async function migrateUp() {
    if (myRole(L.server) !== "owner") return;
    try { await call("POST", `/api/v1/db/${enc(db)}/migrations`, { migrations: MIGRATIONS }); } catch (e) { toast(`Schema update failed: ${e.message}`, true); }
  }

  /** Owner: people who redeemed an invite get a profile and a members row (viewers cannot add themselves). */
  let reconciling = false;
  async function reconcile() {
    if (reconciling || !L.server) return;
    reconciling = true;
    try {
      const { members } = await call("GET", `/api/v1/db/${enc(db)}/members`);
      const known = new Set(L.server.members.map((m) => m.subject));
      const stmts = [];
      for (const m of members) {
        if (known.has(m.subject)) continue;
        stmts.push(["INSERT INTO profiles (subject, name) VALUES (?, ?) ON CONFLICT (subject) DO NOTHING", [m.subject, m.name || m.subject]]);
        stmts.push(["INSERT INTO list_members (subject, role) VALUES (?, ?) ON CONFLICT (subject) DO NOTHING", [m.subject, roleOf(m.scopes)]]);
      }
      if (stmts.length) await batch(db, stmts);
      return members;
    } catch { return null; } finally { reconciling = false; }
  }

  // ----- rendering -----
  const rows = new Map(); // task id -> li
  function render() {
    const s = shown();
    if (!s) return;
    probe.state = s;
    drawBanner();
    // Title, streak, share.
    if (!title.querySelector("input")) {
      fill(title, L.isOwner && !L.readOnly
        ? h("button", { class: "title-btn", id: "rename-btn", title: "Rename the list", onclick: () => renameList(s.list.name) }, s.list.name)
        : s.list.name);
    }
    document.title = `${s.list.name} · FlowList`;
    const team = streak(s.team_days), mine = streak(s.my_days);
    streakBadge.hidden = false;
    const prev = Number(streakBadge.dataset.n || -1);
    streakBadge.dataset.n = String(team);
    streakBadge.className = team ? "streak on" : "streak";
    streakBadge.title = `${team}-day team streak; yours: ${mine} ${mine === 1 ? "day" : "days"} (days in a row with a finished task, UTC)`;
    fill(streakBadge, h("i", { class: "flame", "aria-hidden": "true" }), team ? `${team}-day streak` : "No streak yet");
    if (prev >= 0 && team > prev) { streakBadge.classList.remove("pop"); void streakBadge.offsetWidth; streakBadge.classList.add("pop"); }
    shareBtn.hidden = !L.isOwner;

    const open = s.tasks.filter((t) => !t.done).sort((a, b) => a.position - b.position);
    const done = s.tasks.filter((t) => t.done).sort((a, b) => (b.done_at || 0) - (a.done_at || 0) || a.position - b.position);
    for (const t of s.tasks) {
      seen(`task:${t.title}`); seen(`done:${t.id}:${t.done}`);
      seen(`assignee:${t.id}:${t.assignee || ""}`); seen(`due:${t.id}:${t.due_date || ""}`); seen(`notes:${t.id}:${t.notes || ""}`);
    }
    for (const c of s.comments) seen(`comment:${c.body}`);
    for (const r of s.reactions) seen(`reaction:${r.task_id}:${r.emoji}:${r.subject}`);
    seen(`order:${open.map((t) => t.id).join(",")}`);

    const active = document.activeElement;
    const activeTask = active && active.closest && active.closest(".task");
    const activeId = activeTask && activeTask.dataset.id;
    const activeWasRow = active === activeTask;
    const firstRects = flipFirst();

    const keep = new Set(s.tasks.map((t) => t.id));
    for (const [id, li] of rows) if (!keep.has(id)) { li.remove(); rows.delete(id); }
    for (const el of openList.querySelectorAll(".skeleton")) el.remove();
    place(openList, open, s);
    place(doneList, done, s);
    emptyState.hidden = open.length > 0;
    doneSection.hidden = done.length === 0;
    doneCount.textContent = String(done.length);
    flipPlay(firstRects);

    if (activeId && document.activeElement !== active) {
      const li = rows.get(activeId);
      if (li) (activeWasRow ? li : li.querySelector(".task-main") || li).focus({ preventScroll: true });
    }
    drawFaces();
    // Keep an open members sheet current (not while a role is being picked).
    if (!sheet.hidden && sheet.drawMembers) {
      const msig = JSON.stringify([s.members, [...L.present.keys()], L.readOnly]);
      const busy = document.activeElement && document.activeElement.classList.contains("role-select");
      if (sheet.dataset.sig !== msig && !busy) { sheet.dataset.sig = msig; sheet.drawMembers(); }
    }
  }

  function place(list, tasks, s) {
    let cursor = list.firstElementChild;
    for (const t of tasks) {
      let li = rows.get(t.id);
      if (!li) { li = taskRow(t.id); rows.set(t.id, li); li.classList.add("enter"); }
      updateRow(li, t, s);
      if (li !== cursor) list.insertBefore(li, cursor); else cursor = cursor.nextElementSibling;
    }
  }

  // FLIP: rows glide to their new places instead of jumping.
  function flipFirst() {
    const m = new Map();
    for (const [id, li] of rows) if (li.isConnected) m.set(id, li.getBoundingClientRect().top);
    return m;
  }
  function flipPlay(firstRects) {
    if (matchMedia("(prefers-reduced-motion: reduce)").matches) return;
    for (const [id, top] of firstRects) {
      const li = rows.get(id);
      if (!li || !li.isConnected || li.classList.contains("dragging")) continue;
      const dy = top - li.getBoundingClientRect().top;
      if (Math.abs(dy) < 2) continue;
      li.animate([{ transform: `translateY(${dy}px)` }, { transform: "none" }], { duration: 220, easing: "cubic-bezier(.2,.8,.2,1)" });
    }
  }

  function profileName(s, subject) {
    const p = s.profiles.find((x) => x.subject === subject);
    return p ? p.name : subject;
  }
  function nameOf(s, subject) {
    if (!subject) return null;
    return subject === selfId ? "You" : profileName(s, subject);
  }

  function taskRow(id) {
    const li = h("li", { class: "task", "data-id": id });
    li.append(
      h("div", { class: "task-main", tabindex: 0 }),
      h("div", { class: "details", hidden: true }));
    return li;
  }

  function updateRow(li, t, s) {
    const comments = s.comments.filter((c) => c.task_id === t.id);
    const reactions = s.reactions.filter((r) => r.task_id === t.id);
    const watchers = [...L.present.values()].filter((p) => p.focus === t.id && p.member !== selfId);
    li.classList.toggle("is-done", !!t.done);
    li.classList.toggle("pending", !!t.pending);
    li.classList.toggle("open", L.open.has(t.id));
    const main = li.querySelector(".task-main");
    const sig = JSON.stringify([t.title, t.done, t.due_date, t.assignee, comments.length, reactions.map((r) => r.emoji + r.subject), watchers.map((w) => w.member), L.readOnly, L.open.has(t.id), nameOf(s, t.assignee)]);
    if (main.dataset.sig !== sig && !main.querySelector(".title-input")) {
      if (main.dataset.sig && !li.classList.contains("enter")) { li.classList.remove("changed"); void li.offsetWidth; li.classList.add("changed"); }
      main.dataset.sig = sig;
      fill(main, ...mainParts(t, s, comments, reactions, watchers));
      main.setAttribute("aria-label", `${t.title}${t.done ? ", done" : ""}${t.due_date ? `, due ${dueLabel(t.due_date).text}` : ""}`);
    }
    li.classList.remove("enter");
    const details = li.querySelector(".details");
    details.hidden = !L.open.has(t.id);
    if (!details.hidden) updateDetails(details, t, s, comments, reactions);
  }

  function mainParts(t, s, comments, reactions) {
    const due = dueLabel(t.due_date);
    const counts = new Map();
    for (const r of reactions) counts.set(r.emoji, (counts.get(r.emoji) || 0) + 1);
    const watchers = [...L.present.values()].filter((p) => p.focus === t.id && p.member !== selfId);
    return [
      t.done || L.readOnly ? h("span", { class: "handle off", "aria-hidden": "true" })
        : h("span", { class: "handle", title: "Drag to reorder (or Alt+↑/↓)", "aria-hidden": "true", onpointerdown: (e) => startDrag(e, t.id) }),
      h("button", {
        class: "check", role: "checkbox", "aria-checked": t.done ? "true" : "false", tabindex: -1, disabled: L.readOnly,
        "aria-label": t.done ? "Mark as not done" : "Mark as done", onclick: (e) => { e.stopPropagation(); toggleDone(t); },
      }),
      h("div", { class: "task-text" },
        h("span", { class: "title", onclick: (e) => { e.stopPropagation(); if (!L.readOnly) editTitle(t); } }, t.title),
        h("span", { class: "meta" },
          due ? h("span", { class: `due ${t.done ? "" : due.cls}` }, h("i", { class: "ico cal", "aria-hidden": "true" }), due.text) : null,
          t.notes ? h("span", { class: "has-notes", title: "Has notes" }, h("i", { class: "ico note", "aria-hidden": "true" }), "notes") : null,
          comments.length ? h("span", { class: "comment-count", title: `${comments.length} comments` }, h("i", { class: "ico bubble-ico", "aria-hidden": "true" }), comments.length) : null,
          [...counts].map(([e, n]) => h("span", { class: "react-sum" }, e, n > 1 ? ` ${n}` : "")),
          watchers.length ? h("span", { class: "viewing" }, watchers.map((w) => avatar(w.name, w.member, "tiny")), " viewing") : null)),
      t.assignee ? avatar(profileName(s, t.assignee), t.assignee, "assignee") : null,
      h("button", { class: "expand", tabindex: -1, "aria-expanded": L.open.has(t.id) ? "true" : "false", "aria-label": "Details", onclick: (e) => { e.stopPropagation(); toggleOpen(t.id); } }, "›"),
    ];
  }

  function updateDetails(details, t, s, comments, reactions) {
    if (!details.firstChild) {
      details.append(
        h("div", { class: "fields" }),
        h("div", { class: "reactions" }),
        h("div", { class: "thread" }),
        h("form", { class: "comment-form" }));
    }
    const [fields, reacts, thread, form] = details.children;
    // Fields: skip while one of them is being edited.
    const fsig = JSON.stringify([t.notes, t.due_date, t.assignee, s.profiles.length, L.readOnly, t.done]);
    if (fields.dataset.sig !== fsig && !fields.contains(document.activeElement)) {
      fields.dataset.sig = fsig;
      const notes = h("textarea", { class: "notes", rows: 3, maxlength: 5000, placeholder: "Notes…", "aria-label": "Notes", disabled: L.readOnly });
      notes.value = t.notes || "";
      notes.addEventListener("blur", () => { if (notes.value !== (t.notes || "")) act({ type: "editTask", id: t.id, fields: { notes: notes.value }, key: `notes:${t.id}:${notes.value}` }); });
      const due = h("input", { type: "date", class: "due-input", value: t.due_date || "", "aria-label": "Due date", disabled: L.readOnly });
      due.addEventListener("change", () => act({ type: "editTask", id: t.id, fields: { due_date: due.value || null }, key: `due:${t.id}:${due.value}` }));
      const who = h("select", { class: "assignee-input", "aria-label": "Assignee", disabled: L.readOnly },
        h("option", { value: "" }, "Nobody"),
        s.profiles.map((p) => h("option", { value: p.subject, selected: p.subject === t.assignee }, p.subject === selfId ? `${p.name} (you)` : p.name)));
      who.addEventListener("change", () => act({ type: "editTask", id: t.id, fields: { assignee: who.value || null }, key: `assignee:${t.id}:${who.value}` }));
      const del = h("button", { class: "btn small danger del-task", type: "button", hidden: L.readOnly }, "Delete task");
      del.addEventListener("click", () => {
        if (del.dataset.armed) act({ type: "deleteTask", id: t.id });
        else { del.dataset.armed = "1"; del.textContent = "Click again to delete"; setTimeout(() => { delete del.dataset.armed; del.textContent = "Delete task"; }, 3000); }
      });
      const by = t.created_by ? `Added by ${nameOf(s, t.created_by)}` : "";
      const doneBy = t.done && t.done_by ? ` · done by ${nameOf(s, t.done_by)}` : "";
      fill(fields,
        h("label", { class: "field wide" }, h("span", {}, "Notes"), notes),
        h("label", { class: "field" }, h("span", {}, "Due"), due),
        h("label", { class: "field" }, h("span", {}, "Assignee"), who),
        h("div", { class: "field-foot" }, h("span", { class: "muted small" }, by + doneBy), del));
    }
    const rsig = JSON.stringify([reactions.map((r) => r.emoji + r.subject), L.readOnly]);
    if (reacts.dataset.sig !== rsig) {
      reacts.dataset.sig = rsig;
      fill(reacts, EMOJI.map((e) => {
        const who = reactions.filter((r) => r.emoji === e);
        const mineOn = who.some((r) => r.subject === selfId);
        return h("button", {
          class: `react${mineOn ? " on" : ""}${who.length ? " some" : ""}`, type: "button", "data-emoji": e, "aria-pressed": mineOn ? "true" : "false",
          title: who.length ? who.map((r) => nameOf(s, r.subject)).join(", ") : `React ${e}`, disabled: L.readOnly,
          onclick: () => act({ type: "react", task_id: t.id, emoji: e, on: !mineOn, key: `reaction:${t.id}:${e}:${selfId}` }),
        }, e, who.length ? h("span", { class: "n" }, String(who.length)) : null);
      }));
    }
    const csig = JSON.stringify([comments.map((c) => [c.id, c.body, c.pending]), L.readOnly]);
    if (thread.dataset.sig !== csig) {
      thread.dataset.sig = csig;
      fill(thread, comments.length ? comments.map((c) => h("div", { class: `comment${c.pending ? " pending" : ""}`, "data-id": c.id },
        avatar(c.author_name, c.author, "small"),
        h("div", { class: "bubble" },
          h("div", { class: "cmeta" }, h("strong", {}, c.author === selfId ? "You" : c.author_name || "?"),
            h("span", { class: "muted small" }, c.created_at ? new Date(c.created_at * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : ""),
            (c.author === selfId || L.isOwner) && !L.readOnly
              ? h("button", { class: "link", type: "button", onclick: () => act({ type: "deleteComment", id: c.id }) }, "delete") : null),
          h("p", {}, c.body))))
        : h("p", { class: "muted small no-comments" }, "No comments yet."));
    }
    if (!form.firstChild || form.dataset.ro !== String(L.readOnly)) {
      form.dataset.ro = String(L.readOnly);
      const input = h("input", { class: "comment-input", maxlength: 2000, placeholder: L.readOnly ? "Viewers can't comment" : "Write a comment…", "aria-label": "Comment", disabled: L.readOnly, autocomplete: "off" });
      fill(form, input, h("button", { class: "btn small", type: "submit", disabled: L.readOnly }, "Send"));
      form.onsubmit = (ev) => {
        ev.preventDefault();
        const body = input.value.trim();
        if (!body) return;
        input.value = "";
        act({ type: "addComment", id: uid(), task_id: t.id, body, key: `comment:${body}` });
      };
    }
  }

  // ----- actions -----
  function toggleOpen(id) {
    if (L.open.has(id)) L.open.delete(id); else L.open.add(id);
    render();
    beat();
  }
  function toggleDone(t) {
    act({ type: "setDone", id: t.id, done: t.done ? 0 : 1, key: `done:${t.id}:${t.done ? 0 : 1}` });
  }
  function editTitle(t) {
    const li = rows.get(t.id);
    const span = li && li.querySelector(".title");
    if (!span) return;
    const input = h("input", { class: "title-input", value: t.title, maxlength: 300, "aria-label": "Task title" });
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      const v = input.value.trim();
      const main = li.querySelector(".task-main");
      main.dataset.sig = ""; // redraw
      input.replaceWith(h("span", { class: "title" }, v || t.title));
      if (save && v && v !== t.title) act({ type: "editTask", id: t.id, fields: { title: v }, key: `task:${v}` });
      else render();
      main.focus({ preventScroll: true });
    };
    input.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      if (e.key === "Escape") { e.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
    input.addEventListener("click", (e) => e.stopPropagation());
    span.replaceWith(input);
    input.focus();
    input.select();
  }
  function renameList(current) {
    const input = h("input", { class: "title-input big", id: "rename-input", value: current, maxlength: 80, "aria-label": "List name" });
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      title.replaceChildren();
      const v = input.value.trim();
      if (save && v && v !== current) act({ type: "renameList", name: v }); else render();
    };
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") finish(true); if (e.key === "Escape") finish(false); });
    input.addEventListener("blur", () => finish(true));
    fill(title, input);
    input.focus();
    input.select();
  }
  const openTasks = () => { const s = shown(); return s ? s.tasks.filter((t) => !t.done).sort((a, b) => a.position - b.position) : []; };
  /** Moves task `id` to index `to` among the open tasks (a position between its new neighbours). */
  function moveTo(id, to) {
    const others = openTasks().filter((t) => t.id !== id);
    const i = Math.max(0, Math.min(to, others.length));
    const prev = others[i - 1], next = others[i];
    const position = prev && next ? (prev.position + next.position) / 2 : prev ? prev.position + 1 : next ? next.position - 1 : 1;
    const order = [...others.slice(0, i).map((t) => t.id), id, ...others.slice(i).map((t) => t.id)];
    act({ type: "move", id, position, key: `order:${order.join(",")}` });
  }

  addForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const titleText = newInput.value.trim();
    if (!titleText) return;
    const s = shown();
    const max = s && s.tasks.length ? Math.max(...s.tasks.map((t) => t.position)) : 0;
    newInput.value = "";
    act({ type: "addTask", id: uid(), title: titleText, position: Math.floor(max) + 1, key: `task:${titleText}` });
  });

  // Keyboard on a task row.
  const onKey = (e) => {
    const main = e.target.closest && e.target.closest(".task-main");
    if (!main || e.target !== main) return;
    const li = main.parentElement;
    const id = li.dataset.id;
    const t = shown().tasks.find((x) => x.id === id);
    if (!t) return;
    const list = li.parentElement;
    const siblings = [...list.children];
    const idx = siblings.indexOf(li);
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      if (t.done || L.readOnly) return;
      const to = e.key === "ArrowUp" ? idx - 1 : idx + 1;
      if (to < 0 || to >= siblings.length) return;
      moveTo(id, to);
    } else if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      e.preventDefault();
      const all = [...view.querySelectorAll(".task:not(.skeleton) > .task-main")].filter((m) => m.offsetParent);
      const i = all.indexOf(main);
      const next = all[e.key === "ArrowUp" ? i - 1 : i + 1];
      if (next) next.focus();
    } else if (e.key === " " || e.key === "x") {
      e.preventDefault();
      toggleDone(t);
    } else if (e.key === "Enter") {
      e.preventDefault();
      toggleOpen(id);
    } else if (e.key === "F2" || e.key === "e") {
      e.preventDefault();
      if (!L.readOnly) editTitle(t);
    }
  };
  const onClick = (e) => {
    const main = e.target.closest && e.target.closest(".task-main");
    if (main && !e.target.closest("button, input, .title, .handle")) toggleOpen(main.parentElement.dataset.id);
  };
  view.addEventListener("keydown", onKey);
  view.addEventListener("click", onClick);
  cleanup.push(() => view.removeEventListener("keydown", onKey), () => view.removeEventListener("click", onClick));

  // Drag to reorder (pointer: mouse, pen, touch) by the handle.
  function startDrag(e, id) {
    if (L.readOnly || e.button > 0) return;
    e.preventDefault();
    const li = rows.get(id);
    const items = [...openList.children].filter((x) => !x.classList.contains("skeleton"));
    const from = items.indexOf(li);
    if (from < 0) return;
    const rects = items.map((x) => x.getBoundingClientRect());
    const startY = e.clientY;
    const gap = rects.length > 1 ? rects[1].top - rects[0].bottom : 8;
    const step = rects[from].height + gap;
    let to = from;
    li.classList.add("dragging");
    openList.classList.add("sorting");
    const handle = e.currentTarget || e.target;
    try { handle.setPointerCapture(e.pointerId); } catch { /* synthetic */ }
    const onMove = (ev) => {
      const dy = ev.clientY - startY;
      li.style.transform = `translateY(${dy}px)`;
      const mid = rects[from].top + rects[from].height / 2 + dy;
      to = 0;
      items.forEach((x, i) => { if (i !== from && rects[i].top + rects[i].height / 2 < mid) to += 1; });
      items.forEach((x, i) => {
        if (i === from) return;
        const shift = from < to && i > from && i <= to ? -step : from > to && i >= to && i < from ? step : 0;
        x.style.transform = shift ? `translateY(${shift}px)` : "";
      });
    };
    const onUp = () => {
      document.removeEventListener("pointermove", onMove);
      document.removeEventListener("pointerup", onUp);
      document.removeEventListener("pointercancel", onUp);
      for (const x of items) x.style.transform = "";
      li.classList.remove("dragging");
      openList.classList.remove("sorting");
      if (to !== from) moveTo(id, to);
    };
    document.addEventListener("pointermove", onMove);
    document.addEventListener("pointerup", onUp);
    document.addEventListener("pointercancel", onUp);
  }

  // ----- presence: who has the list open, and which task they look at -----
  const presenceBase = `/api/v1/db/${enc(db)}/presence/${enc(room)}`;
  let connectionId = null;
  const focusOf = () => [...L.open].pop() || null;
  const beat = () => call("POST", `${presenceBase}/heartbeat`, {
    member: selfId, state: { name: me.name || selfId, focus: focusOf() },
    ...(connectionId ? { connection_id: connectionId } : {}),
  }).catch(() => {});
  const put = (m) => L.present.set(m.member, { member: m.member, name: (m.state && m.state.name) || m.member, focus: m.state && m.state.focus, since: m.since });
  const pres = stream(`${presenceBase}/stream`, {
    auth: liveAuth,
    onEvent(name, data) {
      if (name === "snapshot") {
        L.present.clear();
        data.members.forEach(put);
        connectionId = data.connection_id;
        beat();
      } else if (name === "join" || name === "update") {
        const known = L.present.has(data.member);
        put(data);
        if (!known && L.isOwner && L.server && !L.server.members.some((m) => m.subject === data.member)) reconcile();
      } else if (name === "leave") L.present.delete(data.member);
      else return;
      render();
    },
  });
  const hb = setInterval(beat, HEARTBEAT_MS);
  cleanup.push(() => pres.stop(), () => clearInterval(hb), () => {
    call("DELETE", `${presenceBase}/${enc(selfId)}`).catch(() => {});
  });

  function drawFaces() {
    const people = [...L.present.values()].sort((a, b) => (a.member === selfId ? -1 : b.member === selfId ? 1 : a.name.localeCompare(b.name)));
    const sig = JSON.stringify(people.map((p) => [p.member, p.name]));
    if (faces.dataset.sig === sig) return;
    faces.dataset.sig = sig;
    fill(faces, people.slice(0, 5).map((p) => h("li", { class: "face", "data-member": p.member, title: p.member === selfId ? `${p.name} (you)` : `${p.name} is here` },
      avatar(p.name, p.member), h("span", { class: "sr-only" }, p.name))),
    people.length > 5 ? h("li", { class: "face more" }, `+${people.length - 5}`) : null);
    faces.setAttribute("aria-label", `Here now: ${people.map((p) => p.name).join(", ")}`);
  }

  // ----- members & sharing sheet -----
  function closeSheet() { sheet.hidden = true; scrim.hidden = true; membersBtn.focus(); }
  sheet.addEventListener("keydown", (e) => { if (e.key === "Escape") closeSheet(); });
  membersBtn.addEventListener("click", () => openSheet(false));
  shareBtn.addEventListener("click", () => openSheet(true));
  cleanup.push(() => { sheet.remove(); scrim.remove(); });

  async function openSheet(focusInvite) {
    sheet.hidden = false;
    scrim.hidden = false;
    const list = h("ul", { class: "member-list", id: "member-list" });
    const drawMembers = () => {
      const s = shown();
      if (!s) return;
      fill(list, s.members.map((m) => {
        const here = L.present.has(m.subject);
        const canEdit = L.isOwner && m.role !== "owner" && !L.readOnly;
        return h("li", { class: "member", "data-subject": m.subject },
          h("span", { class: `avatar-wrap${here ? " here" : ""}` }, avatar(m.name, m.subject)),
          h("span", { class: "mname" }, m.subject === selfId ? `${m.name} (you)` : m.name,
            h("span", { class: "muted small" }, here ? "here now" : m.joined_at ? `joined ${new Date(m.joined_at * 1000).toLocaleDateString()}` : "")),
          canEdit
            ? h("select", { class: "role-select", "data-subject": m.subject, "aria-label": `Role of ${m.name}`, onchange: (e) => changeRole(m, e.target.value, e.target) },
              ["editor", "viewer"].map((r) => h("option", { value: r, selected: r === m.role }, r)))
            : h("span", { class: `chip role-${m.role}` }, m.role),
          canEdit ? h("button", { class: "btn small danger remove", type: "button", onclick: (e) => removeMember(m, e.target) }, "Remove") : null);
      }));
    };
    const inviteBox = h("div", { class: "invite", id: "invite-box" });
    const roleChoice = h("div", { class: "seg", role: "radiogroup", "aria-label": "Invite as" },
      ["editor", "viewer"].map((r, i) => h("label", {}, h("input", { type: "radio", name: "invite-role", value: r, checked: i === 0, id: `invite-${r}` }), r === "editor" ? "Editor" : "Viewer")));
    const mint = h("button", { class: "btn primary", id: "invite-create", type: "button" }, "Create invite link");
    mint.addEventListener("click", async () => {
      const role = sheet.querySelector("input[name=invite-role]:checked").value;
      mint.disabled = true;
      try {
        const r = await call("POST", `/api/v1/db/${enc(db)}/invites`, { room: shown().list.name.slice(0, 128), scopes: scopesFor(role, db), ttl_secs: 7 * 86400, max_uses: 50 });
        const link = `${location.origin}/apps/flowlist/#/join/${r.token}`;
        const field = h("input", { id: "invite-link", readonly: true, value: link, "aria-label": "Invite link" });
        fill(inviteBox,
          h("div", { class: "copy-row" }, field, h("button", { class: "btn", type: "button", id: "copy-invite", onclick: async () => {
            field.select();
            try { await navigator.clipboard.writeText(link); toast("Link copied"); } catch { toast("Select the link and copy it"); }
          } }, "Copy")),
          h("p", { class: "muted small" }, `Joins as ${role}. Works for 50 people for 7 days; anyone signed in who opens it joins.`));
        field.select();
      } catch (e) { fill(inviteBox, h("p", { class: "error" }, e.message)); } finally { mint.disabled = false; }
    });
    const offline = h("div", { class: "offline-copy", id: "offline-copy" },
      h("button", { class: "btn small", type: "button", id: "sync-token-btn", onclick: syncToken }, "Take offline with patchwork sync…"));
    async function syncToken() {
      try {
        const expires = new Date(Date.now() + 7 * 86400000).toISOString().replace(/\.\d+Z$/, "Z");
        const r = await call("POST", "/api/v1/admin/tokens", {
          label: `flowlist sync ${room}`.slice(0, 120), expires_at: expires,
          scopes: ["sync.read", "sync.write", "query.read"].map((action) => ({ db_id: db, action })),
        });
        const cmd = `patchwork sync --url ${location.origin} --token ${r.token} --db ${db} --file ${room}.sqlite3 --watch`;
        fill(offline, h("p", { class: "muted small" }, "A token for syncing this list (valid 7 days, shown once). Run:"),
          h("pre", { class: "cmd", id: "sync-cmd" }, cmd),
          h("p", { class: "muted small" }, "Edit the file with sqlite3 (.dbconfig enable_trigger off), changes merge back. See the app README."));
      } catch (e) { fill(offline, h("p", { class: "error" }, e.message)); }
    }
    fill(sheet,
      h("div", { class: "sheet-head" }, h("h2", { id: "sheet-title" }, "Members"), h("button", { class: "link close", type: "button", onclick: closeSheet, "aria-label": "Close" }, "✕")),
      list,
      L.isOwner ? h("section", { class: "sheet-sec" }, h("h3", {}, "Invite by link"), h("p", { class: "muted small" }, "Editors add, edit, reorder and comment. Viewers follow along. Patchwork enforces the role, not the app."), roleChoice, mint, inviteBox) : null,
      L.isOwner ? h("section", { class: "sheet-sec" }, h("h3", {}, "Offline copy"), offline) : null);
    drawMembers();
    sheet.drawMembers = drawMembers;
    (focusInvite ? mint : sheet.querySelector(".close")).focus();
    if (L.isOwner) await reconcile();
  }

  async function changeRole(m, role, select) {
    select.disabled = true;
    try {
      // The grants first (what Patchwork enforces, at once, also on the person's open
      // sessions), then the row the app shows.
      await call("PATCH", `/api/v1/db/${enc(db)}/members/${enc(m.subject)}`, { scopes: scopesFor(role, db) });
      await exec(db, "UPDATE list_members SET role = ? WHERE subject = ?", [role, m.subject]);
      toast(`${m.name} is now ${role === "editor" ? "an editor" : "a viewer"}`);
    } catch (e) {
      toast(e.status === 404 || e.status === 405 ? `Role change not available: ${e.message}` : e.message, true);
      select.value = m.role;
    } finally { select.disabled = false; }
  }
  async function removeMember(m, btn) {
    if (!btn.dataset.armed) { btn.dataset.armed = "1"; btn.textContent = "Confirm"; return; }
    btn.disabled = true;
    try {
      await call("DELETE", `/api/v1/db/${enc(db)}/members/${enc(m.subject)}`).catch((e) => { if (e.status !== 404) throw e; });
      await exec(db, "DELETE FROM list_members WHERE subject = ?", [m.subject]);
      toast(`${m.name} was removed`);
    } catch (e) { toast(e.message, true); btn.disabled = false; }
  }

  drawBanner();
}

await loadMe();
route();
