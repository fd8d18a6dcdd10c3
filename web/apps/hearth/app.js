// Hearth: an ephemeral, voice-first group chat on Patchwork's public API only.
// Hash routes: #/ (rooms), #/room/{db_id}, #/join/{invite token}.
// One document per room (db_id `hearth-{slug}`); see schema.js for the rules it enforces.

import { api, sql, objects, stream, ApiError } from "../shared/api.js";
import { h, toast, initials } from "../shared/dom.js";
import { MIGRATIONS, EXPIRY, guestScopes } from "./schema.js";
import { solve } from "/apps/shared/pow.js";

const HEARTBEAT_MS = 30_000;
const EDIT_WINDOW_S = 60;
const view = document.getElementById("view");
const whoami = document.getElementById("whoami");
let me = null; // the owner's session: {subject, name, csrf_token} or null
let cleanup = []; // stoppers of the current view's streams and timers

// ---------- DOM helpers (h, toast, initials: ../shared/dom.js) ----------
function mount(...kids) { view.replaceChildren(...kids); }
function hue(s) { let x = 0; for (const c of s || "") x = (x * 31 + c.charCodeAt(0)) >>> 0; return x % 360; }
function avatar(name, id) {
  const a = h("span", { class: "avatar", "aria-hidden": "true" }, initials(name));
  a.style.setProperty("--hue", hue(id || name));
  return a;
}
function duration(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
function slugify(name) {
  return name.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "room";
}

// ---------- who is calling ----------
const guestKey = (db) => `hearth.guest.${db}`;
function guestFor(db) {
  try {
    const g = JSON.parse(sessionStorage.getItem(guestKey(db)) || "null");
    if (g && Date.parse(g.expires_at) > Date.now()) return g;
  } catch { /* ignore */ }
  return null;
}
function guestRooms() {
  const out = [];
  for (let i = 0; i < sessionStorage.length; i++) {
    const k = sessionStorage.key(i);
    if (k.startsWith("hearth.guest.")) { const g = guestFor(k.slice(13)); if (g) out.push(g); }
  }
  return out;
}
/** The credentials for a room's document: a guest token for it, else the owner's session. */
function authFor(db) {
  const g = guestFor(db);
  if (g) return { token: g.token, id: g.token_id, name: g.member, guest: true };
  if (me) return { csrf: me.csrf_token, id: me.subject, name: me.name || me.email || me.subject, guest: false };
  return null;
}
async function loadMe() {
  try { me = await api("GET", "/auth/me"); } catch { me = null; }
  whoami.replaceChildren();
  if (me) whoami.append(avatar(me.name || me.subject, me.subject), h("span", { id: "me-name" }, me.name || me.email || me.subject));
}

// ---------- router ----------
async function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  const hash = location.hash.replace(/^#/, "") || "/";
  const [, page, arg] = hash.split("/");
  try {
    if (page === "room" && arg) await roomView(decodeURIComponent(arg));
    else if (page === "join" && arg) await joinView(arg);
    else await homeView();
  } catch (e) {
    mount(h("section", { class: "card pad" }, h("h2", {}, "Something went wrong"), h("p", { class: "error" }, e.message)));
  }
}
window.addEventListener("hashchange", route);

// ---------- home: sign in, rooms, create ----------
async function homeView() {
  const guests = guestRooms();
  const parts = [];
  if (!me) {
    let methods = { oidc: false, token_login: true };
    try { methods = await api("GET", "/auth/methods"); } catch { /* keep defaults */ }
    const next = encodeURIComponent("/apps/hearth/");
    parts.push(h("section", { class: "hero" },
      h("h1", {}, "A small fire for your circle."),
      h("p", { class: "lede" }, "Rooms where words fade on their own, you can see who is here, and voice is one tap away."),
      methods.oidc
        ? h("a", { class: "btn primary", id: "signin", href: `/auth/login?next=${next}` }, "Sign in to host a room")
        : h("a", { class: "btn primary", id: "signin", href: "/ui/" }, "Sign in on the dashboard, then come back"),
      h("p", { class: "muted small" }, "Got an invite link? Open it: guests need no account.")));
  }
  if (guests.length) {
    parts.push(h("section", { class: "card" }, h("h2", {}, "Rooms you joined as a guest"),
      h("ul", { class: "rooms" }, guests.map((g) => h("li", {},
        h("a", { class: "room-link", href: `#/room/${encodeURIComponent(g.db_id)}` },
          h("span", { class: "room-name" }, g.room || g.db_id), h("span", { class: "muted small" }, `as ${g.member}`)))))));
  }
  if (me) {
    const list = h("ul", { class: "rooms", id: "room-list" }, h("li", { class: "muted" }, "Loading rooms…"));
    parts.push(h("section", { class: "card" }, h("h2", {}, "Your rooms"), list));
    parts.push(createForm());
    loadRooms(list);
  }
  mount(...parts);
}

async function loadRooms(list) {
  const { dbs } = await api("GET", "/api/v1/dbs");
  const mine = dbs.filter((d) => d.db_id.startsWith("hearth-"));
  if (!mine.length) { list.replaceChildren(h("li", { class: "muted empty" }, "No rooms yet. Light one below.")); return; }
  const auth = authFor("");
  const items = await Promise.all(mine.map(async (d) => {
    let room = { name: d.db_id, description: "", ttl_secs: 0 };
    try { room = objects(await sql(d.db_id, "SELECT name, description, ttl_secs FROM room", [], auth))[0] || room; } catch { /* not a Hearth room */ }
    return h("li", {}, h("a", { class: "room-link", href: `#/room/${encodeURIComponent(d.db_id)}` },
      h("span", { class: "room-name" }, room.name),
      h("span", { class: "muted small" }, [room.description, room.ttl_secs ? `fades after ${duration(room.ttl_secs)}` : ""].filter(Boolean).join(" · "))));
  }));
  list.replaceChildren(...items);
}

function createForm() {
  const err = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card", id: "create-room" },
    h("h2", {}, "Light a new room"),
    h("label", {}, "Name", h("input", { name: "name", id: "room-name", required: true, maxlength: 80, placeholder: "Friday night" })),
    h("label", {}, "Description", h("input", { name: "description", id: "room-desc", maxlength: 280, placeholder: "What is it for?" })),
    h("div", { class: "row" },
      h("label", {}, "Messages fade after",
        h("select", { name: "ttl", id: "room-ttl" },
          [["15", "15 seconds"], ["60", "1 minute"], ["600", "10 minutes"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "1 week"]]
            .map(([v, t]) => h("option", { value: v, selected: v === "3600" }, t)))),
      h("label", {}, "Max people", h("input", { name: "max", type: "number", min: 1, max: 20, value: 20 }))),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "video", id: "room-video" }), "Allow video in voice"),
    err,
    h("button", { class: "btn primary", type: "submit", id: "create-btn" }, "Create room"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const f = new FormData(form);
    const btn = form.querySelector("button");
    btn.disabled = true;
    try {
      const db = await createRoom({
        name: String(f.get("name")).trim(),
        description: String(f.get("description") || "").trim(),
        ttl: Number(f.get("ttl")),
        max: Number(f.get("max")) || 20,
        video: f.get("video") === "on",
      });
      location.hash = `#/room/${encodeURIComponent(db)}`;
    } catch (e) {
      err.textContent = e.message;
    } finally { btn.disabled = false; }
  });
  return form;
}

/** Creates the room's document, applies the schema and expiry rule, writes its settings. */
export async function createRoom({ name, description, ttl, max, video }) {
  const slug = slugify(name);
  const db = `hearth-${slug}`;
  const auth = authFor("");
  const opened = await api("POST", `/api/v1/db/${db}/_open`, undefined, auth);
  if (!opened.created) throw new Error(`a room called “${slug}” already exists`);
  await api("POST", `/api/v1/db/${db}/migrations`, { migrations: MIGRATIONS }, auth);
  await api("PUT", `/api/v1/db/${db}/expiry`, EXPIRY, auth);
  await sql(db, "INSERT INTO room (slug, name, description, owner, ttl_secs, max_participants, allow_video) VALUES (?, ?, ?, ?, ?, ?, ?)",
    [slug, name, description, me.subject, ttl, max, video ? 1 : 0], auth);
  await sql(db, "INSERT INTO members (subject, name, role) VALUES (patchwork_caller(), patchwork_caller_name(), 'owner')", [], auth);
  return db;
}

// ---------- join: proof of work, a name, redeem ----------
function invitePayload(token) {
  try {
    const p = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(p + "===".slice((p.length + 3) % 4)));
  } catch { return null; }
}

async function joinView(token) {
  // The link's payload is readable (its MAC is what the server checks): r = room, e = expiry.
  const info = invitePayload(token) || {};
  const bar = h("div", { class: "progress", id: "pow-progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, h("span"));
  const status = h("p", { class: "muted small", id: "pow-status" }, "Joining asks your browser for a moment of work, so spam costs spammers.");
  const err = h("p", { class: "error", role: "alert", id: "join-error" });
  const input = h("input", { id: "guest-name", name: "member", required: true, maxlength: 64, placeholder: "Your name", autocomplete: "nickname" });
  const form = h("form", { class: "card join", id: "join-form" },
    h("p", { class: "eyebrow" }, "You're invited"),
    h("h1", {}, info.r ? `#${info.r}` : "a Hearth room"),
    info.e ? h("p", { class: "muted small" }, `Invite valid until ${new Date(info.e * 1000).toLocaleString()}`) : null,
    h("p", { class: "muted" }, "Pick the name the others will see. Messages here fade away on their own."),
    h("label", {}, "Display name", input),
    bar, status, err,
    h("button", { class: "btn primary", type: "submit", id: "join-btn" }, "Join"));
  bar.hidden = true;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const member = input.value.trim();
    if (!member) return;
    const btn = form.querySelector("button");
    btn.disabled = true;
    try {
      const c = await api("GET", "/api/v1/pow/challenge");
      bar.hidden = false;
      const expected = 2 ** c.difficulty;
      const started = performance.now();
      // The solver reports only its answer: the bar follows the expected time (≈2 M hashes/s).
      const tick = setInterval(() => {
        const ms = performance.now() - started;
        const pct = Math.min(95, 100 * (1 - Math.exp(-ms / Math.max(50, expected / 2000))));
        bar.firstChild.style.setProperty("--pct", `${pct}%`);
        bar.setAttribute("aria-valuenow", Math.round(pct));
        status.textContent = `Solving a ${c.difficulty}-bit puzzle (about ${expected.toLocaleString()} hashes)… ${(ms / 1000).toFixed(1)} s`;
      }, 80);
      let solved;
      try { solved = await solve(c.challenge, c.difficulty); } finally { clearInterval(tick); }
      bar.firstChild.style.setProperty("--pct", "100%");
      bar.setAttribute("aria-valuenow", 100);
      bar.classList.add("done");
      status.textContent = `Solved: ${solved.hashes.toLocaleString()} hashes in ${Math.round(solved.ms)} ms.`;
      const r = await api("POST", "/api/v1/invites/redeem", { token, member }, null,
        { "Patch-PoW": `${c.challenge}:${solved.nonce}` });
      sessionStorage.setItem(guestKey(r.db_id), JSON.stringify(r));
      const auth = authFor(r.db_id);
      await sql(r.db_id, "INSERT OR IGNORE INTO members (subject, name, role, vouched_by) VALUES (patchwork_caller(), patchwork_caller_name(), 'guest', (SELECT owner FROM room))", [], auth);
      await sql(r.db_id, "INSERT INTO messages (kind, body) VALUES ('system', ?)", [`${member} joined`], auth).catch(() => {});
      status.textContent += ` Welcome, ${member}: taking you in…`;
      await new Promise((res) => setTimeout(res, 900));
      location.hash = `#/room/${encodeURIComponent(r.db_id)}`;
    } catch (e) {
      err.textContent = e instanceof ApiError && e.code === "invalid_invite" ? `This invite does not work: ${e.message}` : e.message;
      btn.disabled = false;
    }
  });
  mount(form);
  input.focus({ preventScroll: true });
}

// ---------- the room ----------
async function roomView(db) {
  const auth = authFor(db);
  if (!auth) { location.hash = "#/"; return; }
  const [room] = objects(await sql(db, "SELECT slug, name, description, owner, ttl_secs, max_participants, allow_video FROM room", [], auth));
  if (!room) throw new Error("This document is not a Hearth room.");
  const isOwner = !auth.guest && me && me.subject === room.owner;
  let editing = null; // message id being edited

  const people = h("ul", { class: "people", id: "presence" });
  const peopleCount = h("span", { class: "count", id: "presence-count" }, "0");
  const log = h("ol", { class: "log", id: "messages" });
  const input = h("input", { id: "compose-input", maxlength: 2000, placeholder: `Message #${room.slug}  ·  /me to emote`, autocomplete: "off" });
  const editBanner = h("div", { class: "edit-banner", hidden: true }, "Editing your message · Esc to cancel");
  const compose = h("form", { class: "compose", id: "compose" }, editBanner, input, h("button", { class: "btn primary", id: "send" }, "Send"));
  const panel = h("div", { class: "panel", id: "panel", hidden: true });
  const actions = h("div", { class: "actions" },
    h("button", { class: "btn voice", id: "voice-btn", onclick: () => voice(db, room, auth, panel) }, h("span", { class: "mic", "aria-hidden": "true" }), "Voice"),
    isOwner ? h("button", { class: "btn", id: "invite-btn", onclick: () => invite(db, room, auth, panel) }, "Invite") : null,
    isOwner ? h("button", { class: "btn", id: "members-btn", onclick: () => membersPanel(db, room, auth, panel) }, "Members") : null,
    isOwner ? h("button", { class: "btn", id: "settings-btn", onclick: () => settingsPanel(db, room, auth, panel) }, "Settings") : null,
    isOwner ? null : h("button", { class: "btn", id: "leave-btn", onclick: () => leave(db, auth) }, "Leave"));

  mount(h("section", { class: "room" },
    h("header", { class: "room-head" },
      h("div", {},
        h("a", { class: "back muted small", href: "#/" }, "← Rooms"),
        h("h1", { id: "room-title" }, room.name),
        h("p", { class: "muted small" }, [room.description, `messages fade after ${duration(room.ttl_secs)}`, room.allow_video ? "video on" : "voice only"].filter(Boolean).join(" · "))),
      actions),
    panel,
    h("div", { class: "room-body" },
      h("aside", { class: "side" }, h("h2", {}, "Here now ", peopleCount), people),
      h("div", { class: "chat" }, log, compose))));

  // Messages: a query watch keeps the list in step with the document (new, edited, expired).
  let rows = [];
  const render = () => {
    const now = Date.now() / 1000;
    const byId = new Map([...log.children].map((li) => [li.dataset.id, li]));
    const keep = new Set();
    for (const m of rows) {
      const id = String(m.id);
      keep.add(id);
      let li = byId.get(id);
      const sig = `${m.body}|${m.edited_at}`;
      if (!li || li.dataset.sig !== sig) {
        const fresh = messageItem(m, auth, isOwner, (msg) => {
          editing = msg.id; input.value = msg.body; editBanner.hidden = false; input.focus();
        }, db);
        fresh.dataset.sig = sig;
        if (li) li.replaceWith(fresh); else log.append(fresh);
        li = fresh;
      }
      const life = m.expires_at && m.created_at ? (m.expires_at - now) / Math.max(1, m.expires_at - m.created_at) : 1;
      li.style.setProperty("--life", Math.max(0, Math.min(1, life)).toFixed(3));
      li.classList.toggle("expiring", life < 0.25);
      li.classList.toggle("expired", life <= 0);
      const left = li.querySelector(".left");
      if (left && m.expires_at) left.textContent = m.expires_at - now > 0 ? `fades in ${duration(Math.ceil(m.expires_at - now))}` : "fading…";
    }
    for (const [id, li] of byId) if (!keep.has(id)) li.remove();
  };
  const watch = stream(`/api/v1/db/${encodeURIComponent(db)}/query/watch`, {
    method: "POST", auth,
    body: { sql: "SELECT id, kind, body, author, author_name, created_at, edited_at, expires_at FROM messages ORDER BY id DESC LIMIT 200" },
    onEvent(name, data) {
      if (name !== "snapshot" && name !== "update") return;
      const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      rows = objects(data).reverse();
      render();
      if (atBottom || name === "snapshot") log.scrollTop = log.scrollHeight;
    },
  });
  const fade = setInterval(render, 1000);
  cleanup.push(() => watch.stop(), () => clearInterval(fade));

  // Presence: the stream's snapshot, joins and leaves; our heartbeat is bound to that stream,
  // so closing the page leaves at once (and the 60 s TTL covers a lost connection).
  const present = new Map();
  const drawPeople = () => {
    peopleCount.textContent = String(present.size);
    people.replaceChildren(...[...present.values()].sort((a, b) => a.name.localeCompare(b.name)).map((p) =>
      h("li", { class: "person", "data-member": p.member },
        avatar(p.name, p.member), h("span", { class: "pname" }, p.name),
        p.role === "owner" ? h("span", { class: "tag" }, "host") : p.role === "guest" ? h("span", { class: "tag soft" }, "guest") : null)));
  };
  const put = (m) => present.set(m.member, { member: m.member, name: (m.state && m.state.name) || m.member, role: m.state && m.state.role });
  const presenceBase = `/api/v1/db/${encodeURIComponent(db)}/presence/${encodeURIComponent(room.slug)}`;
  let connectionId = null;
  const beat = () => api("POST", `${presenceBase}/heartbeat`, {
    member: auth.id, state: { name: auth.name, role: isOwner ? "owner" : auth.guest ? "guest" : "member" },
    ...(connectionId ? { connection_id: connectionId } : {}),
  }, auth).catch((e) => toast(`presence: ${e.message}`, true));
  const pres = stream(`${presenceBase}/stream`, {
    auth,
    onEvent(name, data) {
      if (name === "snapshot") {
        present.clear(); data.members.forEach(put);
        connectionId = data.connection_id;
        beat();
      } else if (name === "join" || name === "update") put(data);
      else if (name === "leave") present.delete(data.member);
      drawPeople();
    },
  });
  const hb = setInterval(beat, HEARTBEAT_MS);
  cleanup.push(() => pres.stop(), () => clearInterval(hb), () => {
    api("DELETE", `${presenceBase}/${encodeURIComponent(auth.id)}`, undefined, auth).catch(() => {});
  });

  // Compose: text, /me emotes, edits of your own message within 60 s.
  const stopEdit = () => { editing = null; editBanner.hidden = true; input.value = ""; };
  input.addEventListener("keydown", (e) => { if (e.key === "Escape" && editing) stopEdit(); });
  compose.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    try {
      if (editing) {
        await sql(db, "UPDATE messages SET body = ? WHERE id = ?", [text, editing], auth);
        stopEdit();
      } else {
        const emote = text.startsWith("/me ");
        await sql(db, "INSERT INTO messages (kind, body) VALUES (?, ?)", [emote ? "emote" : "text", emote ? text.slice(4) : text], auth);
        input.value = "";
      }
    } catch (e) { toast(e.message, true); }
  });
  input.focus({ preventScroll: true });
}

function messageItem(m, auth, isOwner, onEdit, db) {
  const mine = m.author === auth.id;
  const when = m.created_at ? new Date(m.created_at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  const tools = h("span", { class: "tools" });
  if (mine && m.kind !== "system" && Date.now() / 1000 - m.created_at < EDIT_WINDOW_S) {
    tools.append(h("button", { class: "link", onclick: () => onEdit(m) }, "edit"));
  }
  if (mine || isOwner) {
    tools.append(h("button", { class: "link", onclick: () => sql(db, "DELETE FROM messages WHERE id = ?", [m.id], auth).catch((e) => toast(e.message, true)) }, "delete"));
  }
  const li = h("li", { class: `msg ${m.kind}${mine ? " mine" : ""}`, "data-id": m.id });
  if (m.kind === "system") {
    li.append(h("span", { class: "body" }, m.body), h("span", { class: "left muted small" }));
    return li;
  }
  li.append(
    avatar(m.author_name, m.author),
    h("div", { class: "bubble" },
      h("div", { class: "meta" }, h("strong", { class: "author" }, m.author_name || "?"), h("span", { class: "muted small" }, when),
        m.edited_at ? h("span", { class: "muted small" }, "edited") : null, tools),
      h("p", { class: "body" }, m.kind === "emote" ? `${m.author_name} ${m.body}` : m.body),
      h("div", { class: "lifebar", "aria-hidden": "true" }, h("span")),
      h("span", { class: "left muted small" })));
  return li;
}

// ---------- invite (owner) ----------
async function invite(db, room, auth, panel) {
  panel.hidden = false;
  panel.replaceChildren(h("p", { class: "muted" }, "Minting an invite…"));
  try {
    const r = await api("POST", `/api/v1/db/${encodeURIComponent(db)}/invites`,
      { room: room.slug, scopes: guestScopes(room.slug), ttl_secs: 86400, max_uses: Math.max(1, room.max_participants - 1) }, auth);
    const link = `${location.origin}/apps/hearth/#/join/${r.token}`;
    const field = h("input", { id: "invite-link", readonly: true, value: link });
    panel.replaceChildren(
      h("div", { class: "panel-head" }, h("h2", {}, "Invite link"), h("button", { class: "link", onclick: () => { panel.hidden = true; } }, "close")),
      h("p", { class: "muted small" }, `Good for ${r.max_uses} people until ${new Date(r.expires_at).toLocaleString()}. Guests solve a small puzzle, pick a name and can read, write and be present in this room only.`),
      h("div", { class: "copy-row" }, field, h("button", { class: "btn", id: "copy-invite", onclick: async () => {
        field.select();
        try { await navigator.clipboard.writeText(link); toast("Link copied"); } catch { toast("Select the link and copy it"); }
      } }, "Copy")));
  } catch (e) { panel.replaceChildren(h("p", { class: "error" }, e.message)); }
}

// ---------- members (owner): list and kick; leave (anyone) ----------
async function membersPanel(db, room, auth, panel) {
  panel.hidden = false;
  const list = h("ul", { class: "members", id: "member-list" }, h("li", { class: "muted" }, "Loading…"));
  panel.replaceChildren(
    h("div", { class: "panel-head" }, h("h2", {}, "Members"), h("button", { class: "link", onclick: () => { panel.hidden = true; } }, "close")),
    h("p", { class: "muted small" }, `Up to ${room.max_participants}. Kicking someone removes them and ends their access at once (a guest's token is revoked).`),
    list);
  const draw = async () => {
    const rows = objects(await sql(db, "SELECT subject, name, role, vouched_by, joined_at FROM members ORDER BY role = 'owner' DESC, joined_at", [], auth));
    list.replaceChildren(...rows.map((m) => h("li", { class: "member", "data-subject": m.subject },
      avatar(m.name, m.subject),
      h("span", { class: "pname" }, m.name),
      h("span", { class: m.role === "owner" ? "tag" : "tag soft" }, m.role === "owner" ? "host" : m.role),
      h("span", { class: "muted small" }, `since ${new Date(m.joined_at * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" })}`),
      m.role === "owner" ? null : h("button", { class: "btn small danger kick", onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          await kick(db, m, auth);
          toast(`${m.name} was removed`);
          await draw();
        } catch (e) { toast(e.message, true); ev.target.disabled = false; }
      } }, "Kick"))));
  };
  try { await draw(); } catch (e) { list.replaceChildren(h("li", { class: "error" }, e.message)); }
}

/** The owner removes a member: their row, then their grants (a guest's token is revoked). */
async function kick(db, m, auth) {
  await sql(db, "DELETE FROM members WHERE subject = ?", [m.subject], auth);
  await sql(db, "INSERT INTO messages (kind, body) VALUES ('system', ?)", [`${m.name} was removed`], auth).catch(() => {});
  try {
    await api("DELETE", `/api/v1/db/${encodeURIComponent(db)}/members/${encodeURIComponent(m.subject)}`, undefined, auth);
  } catch (e) {
    // 404: neither an invite's token nor an invited person (nothing more to end).
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
}

async function leave(db, auth) {
  if (!confirm("Leave this room? You will need a new invite to come back.")) return;
  try {
    await sql(db, "INSERT INTO messages (kind, body) VALUES ('system', ?)", [`${auth.name} left`], auth).catch(() => {});
    await sql(db, "DELETE FROM members WHERE subject = patchwork_caller()", [], auth);
  } catch (e) { toast(e.message, true); return; }
  if (auth.guest) sessionStorage.removeItem(guestKey(db));
  location.hash = "#/";
}

// ---------- room settings (owner) ----------
function settingsPanel(db, room, auth, panel) {
  panel.hidden = false;
  const err = h("p", { class: "error", role: "alert" });
  const ttls = [["15", "15 seconds"], ["60", "1 minute"], ["600", "10 minutes"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "1 week"]];
  if (!ttls.some(([v]) => Number(v) === room.ttl_secs)) ttls.push([String(room.ttl_secs), duration(room.ttl_secs)]);
  const form = h("form", { class: "settings", id: "settings-form" },
    h("label", {}, "Name", h("input", { name: "name", id: "set-name", required: true, maxlength: 80, value: room.name })),
    h("label", {}, "Description", h("input", { name: "description", id: "set-desc", maxlength: 280, value: room.description })),
    h("div", { class: "row" },
      h("label", {}, "New messages fade after",
        h("select", { name: "ttl", id: "set-ttl" }, ttls.map(([v, t]) => h("option", { value: v, selected: Number(v) === room.ttl_secs }, t)))),
      h("label", {}, "Max people", h("input", { name: "max", id: "set-max", type: "number", min: 1, max: 20, value: room.max_participants }))),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "video", id: "set-video", checked: !!room.allow_video }), "Allow video in voice"),
    err,
    h("button", { class: "btn primary", type: "submit", id: "save-settings" }, "Save"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const f = new FormData(form);
    try {
      await sql(db, "UPDATE room SET name = ?, description = ?, ttl_secs = ?, max_participants = ?, allow_video = ?",
        [String(f.get("name")).trim(), String(f.get("description") || "").trim(), Number(f.get("ttl")), Number(f.get("max")) || 20, f.get("video") === "on" ? 1 : 0], auth);
      toast("Room saved");
      route();
    } catch (e) { err.textContent = e.message; }
  });
  panel.replaceChildren(
    h("div", { class: "panel-head" }, h("h2", {}, "Room settings"), h("button", { class: "link", onclick: () => { panel.hidden = true; } }, "close")),
    h("p", { class: "muted small" }, "The message life applies to messages sent from now on."),
    form);
}

// ---------- voice: the media token and its grants ----------
async function voice(db, room, auth, panel) {
  panel.hidden = false;
  panel.replaceChildren(h("p", { class: "muted" }, "Asking for a voice pass…"));
  try {
    const t = await api("POST", `/api/v1/db/${encodeURIComponent(db)}/media/token`, { room: room.slug }, auth);
    const g = t.grants;
    const yes = (b) => h("span", { class: b ? "grant on" : "grant off" }, b ? "yes" : "no");
    panel.replaceChildren(
      h("div", { class: "panel-head" }, h("h2", {}, "Voice pass"), h("button", { class: "link", onclick: () => { panel.hidden = true; } }, "close")),
      h("dl", { class: "grants", id: "voice-grants" },
        h("dt", {}, "LiveKit room"), h("dd", { id: "grant-room" }, g.room),
        h("dt", {}, "You are"), h("dd", {}, `${t.name} (${t.identity})`),
        h("dt", {}, "Join / talk / listen / data"), h("dd", {}, yes(g.roomJoin), yes(g.canPublish), yes(g.canSubscribe), yes(g.canPublishData)),
        h("dt", {}, "May publish"), h("dd", { id: "grant-sources" }, g.canPublishSources.map((s) => h("span", { class: "chip" }, s))),
        h("dt", {}, "Valid until"), h("dd", {}, new Date(t.expires_at).toLocaleTimeString())),
      h("p", { class: "muted small" }, "Connecting to the LiveKit server with this token is the next step."));
  } catch (e) {
    panel.replaceChildren(h("p", { class: "error", id: "voice-error" },
      e.code === "media_not_configured" ? "Voice is not set up on this server yet." : e.message));
  }
}

await loadMe();
route();
