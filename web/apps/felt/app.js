// Felt: a poker tournament director on Patchwork's public API only.
// Hash routes: #/ (tournaments), #/td/{db} (TD console), #/clock/{db} (big screen),
// #/player/{db} (phones), #/join/{clock|player}/{invite token} (a screen joins read-only).
// One document per tournament (`felt-{slug}`); schema.js holds the tables and the guarantees.

import { api, stream, ApiError } from "../shared/api.js";
import { h, fill, toast } from "../shared/dom.js";
import { MIGRATIONS, NOW_MS, STATE_SQL, LEVELS_JSON, SCREEN_SCOPES } from "./schema.js";
import { clockAt, fmtTime, blinds, stats, seatDraw, breakTable, balance, canRebuy, canAddon, canRegister, levelNow, rebuySeat, undoSeat, editLevels, parsePayouts, replay, comparable, canonical } from "./felt.js";
import { qrSvg } from "./qr.js";
import { solve } from "/apps/shared/pow.js";

const view = document.getElementById("view");
const whoami = document.getElementById("whoami");
let me = null; // the TD's session {subject, name, csrf_token} or null
let cleanup = [];

// What the tests read: the state shown, when each audit seq was first shown, the TD's actions.
// `opens` counts watch connections; `dropWatch()` cuts the current one (it reconnects).
const probe = { state: null, seen: {}, recv: {}, shown: {}, actions: [], stateSql: STATE_SQL, opens: 0 };
window.felt = probe;
// Room for every request's timing (the latency test reads the TD's batches from it).
if (performance.setResourceTimingBufferSize) performance.setResourceTimingBufferSize(5000);

// ---------- DOM helpers (h, fill, toast: ../shared/dom.js) ----------
function mount(...kids) { fill(view, ...kids); }
function slugify(name) {
  return name.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "tournament";
}
const num = (n) => Number(n || 0).toLocaleString("en");

// ---------- credentials ----------
const screenKey = (db) => `felt.screen.${db}`;
function screenFor(db) {
  try {
    const g = JSON.parse(sessionStorage.getItem(screenKey(db)) || "null");
    if (g && Date.parse(g.expires_at) > Date.now()) return g;
  } catch { /* ignore */ }
  return null;
}
function authFor(db) {
  const g = screenFor(db);
  if (g) return { token: g.token };
  if (me) return { csrf: me.csrf_token };
  return null;
}
async function loadMe() {
  try { me = await api("GET", "/auth/me"); } catch { me = null; }
  whoami.textContent = me ? (me.name || me.email || me.subject) : "";
  whoami.id = "whoami";
}

// ---------- live state: one SQL watch on the whole tournament ----------
const lastKey = (db) => `felt.last.${db}`;
/** How often at most a screen writes its cached state. */
const CACHE_WRITE_MS = 1000;

/**
 * Watches the tournament; `render(state)` on every change, server time offset kept too. The
 * `#conn` badge says `live` or `reconnecting`. With `cache` (the screens), every state is also
 * kept in localStorage and shown at once when the view opens, so a screen reloaded without the
 * network (its shell from the service worker) still shows the clock ticking from the last state
 * while it reconnects. `kick()` reconnects at once (the network or Patchwork is back) instead of
 * waiting out the stream's back-off.
 *
 * What a screen does per update is kept small, because fifty of them share a machine's cores in
 * the same few milliseconds: the badge is touched only when it changes, and the cached state is
 * written at most once a second (and when the page is hidden or left) instead of on every
 * update: a `localStorage` write was a third of a screen's CPU per update.
 */
function watchState(db, render, { cache = false } = {}) {
  let offset = 0;
  let live = false;
  const badge = (k, why) => {
    probe.conn = k;
    const el = document.getElementById("conn");
    if (!el || (el.dataset.conn === k && el.title === (why || ""))) return;
    el.dataset.conn = k;
    el.textContent = k === "live" ? "● Live" : "Reconnecting…";
    el.title = why || "";
  };
  let unsaved = null;
  let saveTimer = null;
  const save = () => {
    clearTimeout(saveTimer);
    saveTimer = null;
    if (!unsaved) return;
    try { localStorage.setItem(lastKey(db), JSON.stringify(unsaved)); } catch { /* full or disabled */ }
    unsaved = null;
  };
  // Throttled, not debounced: a steady stream of updates still reaches the cache every second.
  const saveSoon = (text) => {
    unsaved = { text, offset };
    if (saveTimer === null) saveTimer = setTimeout(save, CACHE_WRITE_MS);
  };
  const saveIfHidden = () => { if (document.visibilityState === "hidden") save(); };
  const show = (text, cached) => {
    const state = JSON.parse(text);
    if (!cached) offset = state.now_ms - Date.now();
    state.serverNow = () => Date.now() + offset;
    state.cached = cached;
    probe.state = state;
    const seq = state.audit_seq || 0;
    render(state);
    if (!cached && !(seq in probe.seen)) probe.seen[seq] = Date.now();
    return seq;
  };
  if (cache) {
    try {
      const c = JSON.parse(localStorage.getItem(lastKey(db)) || "null");
      if (c && c.text) { offset = c.offset; show(c.text, true); badge("reconnecting", "showing the last state seen"); }
    } catch { /* nothing cached */ }
  }
  const open = () => stream(`/api/v1/db/${encodeURIComponent(db)}/query/watch`, {
    method: "POST",
    body: { sql: STATE_SQL, options: { heartbeat_seconds: 10 } },
    auth: authFor(db),
    onEvent(name, data) {
      if (name !== "snapshot" && name !== "update") return;
      const at = performance.timeOrigin + performance.now();
      const text = data.rows[0][0];
      const seq = show(text, false);
      if (!(seq in probe.recv)) probe.recv[seq] = at;
      live = true;
      badge("live");
      if (cache) saveSoon(text);
    },
    onDown(e) { live = false; badge("reconnecting", e.message); window.dispatchEvent(new Event("felt:down")); },
    onOpen() { probe.opens += 1; },
  });
  let s = open();
  const kick = () => { if (!live) { s.stop(); s = open(); } };
  probe.dropWatch = () => { live = false; badge("reconnecting", "dropped"); s.drop(); };
  window.addEventListener("online", kick);
  window.addEventListener("pagehide", save);
  document.addEventListener("visibilitychange", saveIfHidden);
  cleanup.push(() => {
    s.stop();
    save();
    probe.conn = undefined;
    window.removeEventListener("online", kick);
    window.removeEventListener("pagehide", save);
    document.removeEventListener("visibilitychange", saveIfHidden);
  });
  return { kick };
}

// ---------- Patchwork's readiness, shown on the console and every screen ----------
const HEALTH_EVERY_MS = 3000;
/** While the page's watch is live (it ends at once if Patchwork goes), readiness is asked less
 * often: a `/readyz` fetch every 3 s was most of an idle screen's CPU, times fifty screens. */
const HEALTH_LIVE_EVERY_MS = 15000;
const HEALTH_TEXT = { ok: "Patchwork ready", not_ready: "Patchwork not ready", unreachable: "Patchwork unreachable" };
/**
 * A badge polling `GET /readyz` (every 3 s, every 15 s while the page's watch is live; every
 * second while not ready): `data-health` is `ok`
 * (200), `not_ready` (any other answer, e.g. 503 while shutting down) or `unreachable` (no answer
 * in 2 s), and at once when a watch drops. `onReady()` runs when it turns `ok` again after not
 * being ok.
 */
function healthBadge(onReady) {
  const el = h("span", { class: "health", id: "health", "data-health": "unknown", title: "GET /readyz" }, "…");
  const show = (k, why) => {
    if (k === "ok" && el.dataset.health !== "ok" && el.dataset.health !== "unknown" && onReady) onReady();
    probe.health = k;
    const title = why ? `GET /readyz: ${why}` : "GET /readyz";
    if (el.dataset.health === k && el.title === title) return;
    el.dataset.health = k;
    el.textContent = HEALTH_TEXT[k];
    el.title = title;
  };
  let stopped = false;
  let timer = null;
  let inflight = false;
  const poll = async () => {
    if (inflight) return;
    inflight = true;
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 2000);
    try {
      const r = await fetch("/readyz", { cache: "no-store", credentials: "omit", signal: ctl.signal });
      if (!stopped) show(r.ok ? "ok" : "not_ready", r.ok ? "" : `HTTP ${r.status}`);
    } catch (e) {
      if (!stopped) show("unreachable", e.message);
    } finally { clearTimeout(t); inflight = false; }
    clearTimeout(timer);
    const every = el.dataset.health !== "ok" ? 1000 : probe.conn === "live" ? HEALTH_LIVE_EVERY_MS : HEALTH_EVERY_MS;
    if (!stopped) timer = setTimeout(poll, every);
  };
  poll();
  // The watch just dropped: ask now rather than at the next poll.
  const now = () => { clearTimeout(timer); poll(); };
  window.addEventListener("felt:down", now);
  cleanup.push(() => { stopped = true; clearTimeout(timer); window.removeEventListener("felt:down", now); });
  return el;
}

/**
 * Paints `clockBlock` into `el`: in full for a new state or when the level, running or ended
 * state changes; otherwise (the 200 ms ticks) only the time's text, when it changed. Fifty
 * screens on one machine (the latency test) spend their CPU on the updates, not on ticks.
 */
function clockPainter(el) {
  let last = { state: null, key: "", time: null };
  return (s) => {
    if (!s) return;
    const c = clockAt(s.clock, s.levels, s.serverNow());
    const key = c ? `${c.index}|${c.running}|${c.ended}` : "none";
    if (s !== last.state || key !== last.key) {
      fill(el, ...clockBlock(s));
      last = { state: s, key, time: el.querySelector(".time") };
      return;
    }
    const t = fmtTime(c.remaining);
    if (last.time && last.time.textContent !== t) last.time.textContent = t;
  };
}

/** Re-renders the clock parts every 200 ms from the stored clock (nothing ticks on the server). */
function everyTick(fn) {
  const t = setInterval(fn, 200);
  cleanup.push(() => clearInterval(t));
}

// ---------- router ----------
async function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  document.body.className = "";
  const [, page, a, b] = (location.hash.replace(/^#/, "") || "/").split("/");
  try {
    if (page === "td" && a) await tdView(decodeURIComponent(a));
    else if (page === "clock" && a) clockView(decodeURIComponent(a));
    else if (page === "player" && a) playerView(decodeURIComponent(a));
    else if (page === "join" && a && b) await joinView(a, b);
    else await homeView();
  } catch (e) {
    mount(h("section", { class: "card" }, h("h2", {}, "Something went wrong"), h("p", { class: "error" }, e.message)));
  }
}
window.addEventListener("hashchange", route);

// ---------- home ----------
async function homeView() {
  if (!me) {
    let methods = { oidc: false };
    try { methods = await api("GET", "/auth/methods"); } catch { /* defaults */ }
    mount(h("section", { class: "hero" },
      h("h1", {}, "Run the room."),
      h("p", { class: "lede" }, "A tournament clock, seating and eliminations on every screen in the room at once."),
      methods.oidc
        ? h("a", { class: "btn primary", id: "signin", href: `/auth/login?next=${encodeURIComponent("/apps/felt/")}` }, "Sign in as tournament director")
        : h("a", { class: "btn primary", id: "signin", href: "/ui/" }, "Sign in on the dashboard, then come back"),
      h("p", { class: "muted" }, "Screens join with the link the director shares.")));
    return;
  }
  const list = h("ul", { class: "list", id: "tournaments" }, h("li", { class: "muted" }, "Loading…"));
  mount(h("section", { class: "card" }, h("h2", {}, "Your tournaments"), list), createForm());
  const { dbs } = await api("GET", "/api/v1/dbs");
  const mine = dbs.filter((d) => d.db_id.startsWith("felt-"));
  fill(list, ...(mine.length
    ? mine.map((d) => h("li", {}, h("a", { href: `#/td/${encodeURIComponent(d.db_id)}` }, d.db_id.slice(5))))
    : [h("li", { class: "muted" }, "None yet: start one below.")]));
}

function createForm() {
  const f = (name, label, value, extra = {}) => h("label", {}, label, h("input", { name, id: `new-${name}`, value, ...extra }));
  const err = h("p", { class: "error", id: "create-error" });
  const form = h("form", { class: "card grid", id: "create-form" },
    h("h2", {}, "New tournament"),
    f("name", "Name", "", { required: true, maxlength: 80, placeholder: "Friday Deepstack" }),
    f("buy_in", "Buy-in", "100", { type: "number", min: 0 }),
    f("stack", "Starting stack", "10000", { type: "number", min: 1 }),
    f("seats", "Seats per table", "9", { type: "number", min: 2, max: 10 }),
    f("minutes", "Level length (minutes)", "20", { type: "number", min: 0.01, step: "any" }),
    f("rebuy_level", "Rebuys through level (0: none)", "4", { type: "number", min: 0 }),
    f("late_reg", "Late registration through level", "4", { type: "number", min: 1 }),
    f("addon_chips", "Add-on chips (0: none)", "10000", { type: "number", min: 0 }),
    f("addon_cost", "Add-on cost", "100", { type: "number", min: 0 }),
    err,
    h("button", { class: "btn primary", type: "submit", id: "create-btn" }, "Create"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const v = (n) => form.querySelector(`[name=${n}]`).value;
    try {
      const db = await createTournament({ name: v("name").trim(), buyIn: +v("buy_in"), stack: +v("stack"), seats: +v("seats"), minutes: +v("minutes"),
        rebuyUntil: +v("rebuy_level"), lateRegUntil: +v("late_reg"), addonChips: +v("addon_chips"), addonCost: +v("addon_cost") });
      location.hash = `#/td/${encodeURIComponent(db)}`;
    } catch (e) { err.textContent = e.message; }
  });
  return form;
}

const STRUCTURE = [[25, 50, 0], [50, 100, 0], [75, 150, 0], [100, 200, 25], null, [150, 300, 25], [200, 400, 50], [300, 600, 75], [400, 800, 100], [600, 1200, 200]];

/**
 * The document, FULL durability, schema, tournament row, levels and clock: one audit `create`.
 * Add-ons (when `addonChips` > 0) are open from the last rebuy level through the first break
 * after it (or that level when no break follows).
 */
export async function createTournament({ name, buyIn, stack, seats, minutes, rebuyUntil = 0, lateRegUntil = null, addonChips = 0, addonCost = 0 }) {
  const slug = slugify(name);
  const db = `felt-${slug}`;
  const auth = authFor("");
  const opened = await api("POST", `/api/v1/db/${db}/_open`, undefined, auth);
  if (!opened.created) throw new Error(`a tournament called “${slug}” already exists`);
  await api("PUT", `/api/v1/db/${db}/_settings`, { synchronous: "full" }, auth);
  await api("POST", `/api/v1/db/${db}/migrations`, { migrations: MIGRATIONS }, auth);
  const ms = Math.max(1000, Math.round(minutes * 60000));
  const levels = STRUCTURE.map((l, i) => (l
    ? { level: i + 1, sb: l[0], bb: l[1], ante: l[2], duration_ms: ms, is_break: 0 }
    : { level: i + 1, sb: 0, bb: 0, ante: 0, duration_ms: ms, is_break: 1 }));
  const brk = levels.find((l) => l.is_break && l.level >= rebuyUntil);
  const addonUntil = addonChips > 0 && rebuyUntil > 0 ? (brk ? brk.level : rebuyUntil) : 0;
  const t = {
    slug, name, buy_in: buyIn, rebuy_until_level: rebuyUntil, starting_stack: stack, seats_per_table: seats, payouts: [50, 30, 20],
    late_reg_until_level: lateRegUntil || null, addon_chips: addonChips, addon_cost: addonCost, addon_until_level: addonUntil,
  };
  await batch(db, "create", { ...t, levels }, [
    [`INSERT INTO tournament (id, slug, name, buy_in, rebuy_until_level, starting_stack, seats_per_table, payouts,
        late_reg_until_level, addon_chips, addon_cost, addon_until_level) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [slug, name, buyIn, rebuyUntil, stack, seats, JSON.stringify(t.payouts), t.late_reg_until_level, addonChips, addonCost, addonUntil]],
    ...levels.map((l) => ["INSERT INTO levels (level, small_blind, big_blind, ante, duration_ms, is_break) VALUES (?, ?, ?, ?, ?, ?)",
      [l.level, l.sb, l.bb, l.ante, l.duration_ms, l.is_break]]),
    ["INSERT INTO clock (id, level, running, remaining_ms) VALUES (1, 1, 0, ?)", [ms]],
  ]);
  return db;
}

// ---------- TD actions: state changes + one audit row, one transaction ----------
/**
 * Runs `statements` and the audit row in one `query/batch` (one transaction: all or nothing,
 * acknowledged after the fsync). `args` is the audit's JSON: an object, or `{sql, args}` for a
 * SELECT that builds it from the state just written (ids, places, the clock as stored).
 */
async function batch(db, action, args, statements) {
  const audit = args && args.sql
    ? { sql: `INSERT INTO audit (at_ms, actor, action, args) SELECT ${NOW_MS}, patchwork_caller(), ?, (${args.sql})`, args: [action, ...(args.args || [])] }
    : { sql: `INSERT INTO audit (at_ms, actor, action, args) VALUES (${NOW_MS}, patchwork_caller(), ?, ?)`, args: [action, JSON.stringify(args)] };
  const t0 = performance.timeOrigin + performance.now();
  const r = await api("POST", `/api/v1/db/${encodeURIComponent(db)}/query/batch`,
    { statements: [...statements.map(([sql, a]) => ({ sql, args: a || [] })), audit] }, authFor(db));
  const seq = r.results[r.results.length - 1].last_insert_id;
  probe.actions.push({ seq, action, t0, ack: performance.timeOrigin + performance.now() });
  return seq;
}

const CLOCK_AUDIT = { sql: "SELECT json_object('level', level, 'running', running, 'started_at_ms', started_at_ms, 'remaining_ms', remaining_ms) FROM clock" };

function clockActions(db, state) {
  const c = clockAt(state.clock, state.levels, state.serverNow());
  const lv = c.level.level;
  return {
    start: () => batch(db, "clock", CLOCK_AUDIT, [[
      `UPDATE clock SET running = 1, started_at_ms = ${NOW_MS}, level = ?1,
         remaining_ms = CASE WHEN level = ?1 THEN remaining_ms ELSE (SELECT duration_ms FROM levels WHERE level = ?1) END`, [lv]]]),
    // Exact at server time: the time left of the stored level, plus the levels rolled into.
    pause: () => batch(db, "clock", CLOCK_AUDIT, [[
      `UPDATE clock SET remaining_ms = max(0, remaining_ms - (${NOW_MS} - started_at_ms)
         + coalesce((SELECT sum(duration_ms) FROM levels WHERE levels.level > clock.level AND levels.level <= ?1), 0)),
         level = ?1, running = 0, started_at_ms = NULL WHERE running = 1`, [lv]]]),
    go: (delta) => {
      const target = state.levels[c.index + delta];
      if (!target) return Promise.resolve();
      return batch(db, "clock", CLOCK_AUDIT, [[
        `UPDATE clock SET level = ?1, remaining_ms = (SELECT duration_ms FROM levels WHERE level = ?1),
           started_at_ms = CASE WHEN running = 1 THEN ${NOW_MS} END`, [target.level]]]);
    },
  };
}

/**
 * Registers a player; once tables are drawn (late registration) they are seated at once at the
 * lowest free seat of the shortest open table. The schema refuses it after `late_reg_until_level`.
 */
function addPlayer(db, s, name) {
  if (!canRegister(s, s.serverNow())) { toast(`Late registration closed after level ${s.tournament.late_reg_until_level}`, true); return Promise.resolve(); }
  const at = s.tables.some((t) => t.open) ? rebuySeat(s) : null;
  return batch(db, "add_player",
    { sql: "SELECT json_object('id', id, 'name', name, 'table', table_no, 'seat', seat) FROM players WHERE id = (SELECT max(id) FROM players)" },
    [[`INSERT INTO players (name, registered_at_ms) VALUES (?, ${NOW_MS})`, [name]],
      ...(at ? [["UPDATE players SET status = 'seated', table_no = ?, seat = ? WHERE id = (SELECT max(id) FROM players)", at]] : [])]);
}

/** A bust: the next place down, the seat kept (for an undo), the stack gone. */
const bust = (db, id) => batch(db, "bust",
  { sql: "SELECT json_object('player', id, 'place', place, 'at_ms', busted_at_ms, 'table', busted_table, 'seat', busted_seat) FROM players WHERE id = ?", args: [id] },
  [[`UPDATE players SET status = 'busted', busted_table = table_no, busted_seat = seat, table_no = NULL, seat = NULL, chips = NULL,
      busted_at_ms = ${NOW_MS}, place = (SELECT count(*) FROM players WHERE status != 'busted') WHERE id = ? AND status != 'busted'`, [id]]]);

const REBUY_AUDIT = "SELECT json_object('player', id, 'rebuys', rebuys, 'table', table_no, 'seat', seat, 'chips', chips) FROM players WHERE id = ?";

/**
 * A rebuy (one more buy-in to the pool, a starting stack). A busted player comes back at the
 * lowest free seat of the shortest open table (unseated when there is none) with a starting
 * stack; a player still in at or below the starting stack (their count recorded) keeps their
 * seat and their stack grows by it. The schema's triggers refuse anything else, or after the
 * rebuy period, and move the players busted after a returning one up a place.
 */
function rebuy(db, s, id) {
  const p = s.players.find((q) => q.id === id);
  if (!canRebuy(s, p, s.serverNow())) { toast("No rebuy: the rebuy period is over, or the stack is above the starting stack (count it first)", true); return Promise.resolve(); }
  if (p.status !== "busted") {
    return batch(db, "rebuy", { sql: REBUY_AUDIT, args: [id] },
      [["UPDATE players SET rebuys = rebuys + 1, chips = chips + (SELECT starting_stack FROM tournament) WHERE id = ?", [id]]]);
  }
  const [t, seat] = rebuySeat(s) || [null, null];
  return batch(db, "rebuy", { sql: REBUY_AUDIT, args: [id] },
    [[`UPDATE players SET rebuys = rebuys + 1, status = CASE WHEN ?2 IS NULL THEN 'registered' ELSE 'seated' END, table_no = ?2, seat = ?3,
        place = NULL, busted_at_ms = NULL, busted_table = NULL, busted_seat = NULL, chips = (SELECT starting_stack FROM tournament) WHERE id = ?1`,
      [id, t, seat]]]);
}

/** An add-on: the add-on cost into the pool, the add-on chips onto a counted stack. */
function addon(db, s, id) {
  const p = s.players.find((q) => q.id === id);
  if (!canAddon(s, p, s.serverNow())) { toast("No add-on now", true); return Promise.resolve(); }
  return batch(db, "addon",
    { sql: "SELECT json_object('player', id, 'addons', addons, 'chips', chips) FROM players WHERE id = ?", args: [id] },
    [["UPDATE players SET addons = addons + 1, chips = chips + (SELECT addon_chips FROM tournament) WHERE id = ?", [id]]]);
}

/** The TD's chip count of a player still in (blank: not counted). */
const countChips = (db, id, chips) => batch(db, "chips",
  { sql: "SELECT json_object('player', id, 'chips', chips) FROM players WHERE id = ?", args: [id] },
  [["UPDATE players SET chips = ? WHERE id = ?", [chips, id]]]);

/** An undone bust: back to the seat they left if it is free, else a balanced seat; later busts move up a place. */
function undoBust(db, s, id) {
  const p = s.players.find((q) => q.id === id);
  const [t, seat] = undoSeat(s, p) || [null, null];
  return batch(db, "undo_bust",
    { sql: "SELECT json_object('player', id, 'undos', undos, 'table', table_no, 'seat', seat) FROM players WHERE id = ?", args: [id] },
    [[`UPDATE players SET undos = undos + 1, status = CASE WHEN ?2 IS NULL THEN 'registered' ELSE 'seated' END, table_no = ?2, seat = ?3,
        place = NULL, busted_at_ms = NULL, busted_table = NULL, busted_seat = NULL WHERE id = ?1`, [id, t, seat]]]);
}

const SETTINGS_AUDIT = `SELECT json_object('rebuy_until_level', rebuy_until_level, 'late_reg_until_level', late_reg_until_level,
  'addon_chips', addon_chips, 'addon_cost', addon_cost, 'addon_until_level', addon_until_level, 'payouts', json(payouts)) FROM tournament`;

/** Periods, add-on terms and payouts (percentages summing to 100, checked by the schema too). */
const saveSettings = (db, v) => batch(db, "settings", { sql: SETTINGS_AUDIT },
  [[`UPDATE tournament SET rebuy_until_level = ?, late_reg_until_level = ?, addon_chips = ?, addon_cost = ?, addon_until_level = ?, payouts = ?`,
    [v.rebuy_until_level, v.late_reg_until_level, v.addon_chips, v.addon_cost, v.addon_until_level, JSON.stringify(v.payouts)]]]);

/**
 * A structure edit (`edit`, `insert`, `remove` of level `n`, only after the level the clock is
 * at): the levels after it renumbered through a +100000 detour (no key is ever held twice), the
 * periods that name a moved level moved with it; the audit holds the whole structure after it.
 */
function editStructure(db, s, op, n, l) {
  const cur = levelNow(s, s.serverNow());
  const r = editLevels(s.levels, cur, op, n, l);
  if (r.error) { toast(r.error, true); return Promise.resolve(); }
  const t = s.tournament;
  const renumber = (delta) => [
    ["UPDATE levels SET level = level + 100000 WHERE level " + (delta > 0 ? ">=" : ">") + " ?", [n]],
    ["UPDATE levels SET level = level - 100000 + ? WHERE level > 100000", [delta]],
  ];
  const row = (x) => [x.sb, x.bb, x.ante, x.duration_ms, x.is_break ? 1 : 0];
  const stmts = op === "edit"
    ? [["UPDATE levels SET small_blind = ?, big_blind = ?, ante = ?, duration_ms = ?, is_break = ? WHERE level = ?", [...row(l), n]]]
    : op === "insert"
      ? [...renumber(1), ["INSERT INTO levels (small_blind, big_blind, ante, duration_ms, is_break, level) VALUES (?, ?, ?, ?, ?, ?)", [...row(l), n]]]
      : [["DELETE FROM levels WHERE level = ?", [n]], ...renumber(-1)];
  if (op !== "edit") {
    stmts.push(["UPDATE tournament SET rebuy_until_level = ?, late_reg_until_level = ?, addon_until_level = ?",
      [r.shift(t.rebuy_until_level), r.shift(t.late_reg_until_level), r.shift(t.addon_until_level)]]);
  }
  return batch(db, "structure", {
    sql: `SELECT json_object('op', ?, 'level', ?, 'levels', json(${LEVELS_JSON}), 'rebuy_until_level', rebuy_until_level,
      'late_reg_until_level', late_reg_until_level, 'addon_until_level', addon_until_level) FROM tournament`,
    args: [op, n],
  }, stmts);
}

const seatStatements = (moves) => moves.map(([id, t, s]) => ["UPDATE players SET status = 'seated', table_no = ?, seat = ? WHERE id = ?", [t, s, id]]);

function drawSeats(db, state) {
  const d = seatDraw(state);
  return batch(db, "seat_draw", d, [
    ["UPDATE players SET status = 'registered', table_no = NULL, seat = NULL WHERE status = 'seated'"],
    ["DELETE FROM tables"],
    ...d.tables.map((t) => ["INSERT INTO tables (table_no, seats, open) VALUES (?, ?, 1)", [t.table_no, t.seats]]),
    ...seatStatements(d.seats),
  ]);
}

function doBreak(db, state, tableNo) {
  const b = breakTable(state, tableNo);
  if (b.error) { toast(b.error, true); return Promise.resolve(); }
  // Vacate first, so no seat is ever held twice inside the transaction.
  return batch(db, "break_table", b, [
    ["UPDATE players SET status = 'registered', table_no = NULL, seat = NULL WHERE table_no = ?", [tableNo]],
    ...seatStatements(b.moves),
    ["UPDATE tables SET open = 0 WHERE table_no = ?", [tableNo]],
  ]);
}

const move = (db, m) => batch(db, "move", { player: m.player, table: m.table, seat: m.seat }, [
  ["UPDATE players SET status = 'registered', table_no = NULL, seat = NULL WHERE id = ?", [m.player]],
  ...seatStatements([[m.player, m.table, m.seat]]),
]);

/** Runs a TD action; "done" shows only once the server acknowledged the commit. */
async function doing(btn, fn) {
  btn.disabled = true;
  try { await fn(); toast("Done"); } catch (e) { toast(e.message, true); } finally { btn.disabled = false; }
}

// ---------- TD console ----------
async function tdView(db) {
  if (!me) { location.hash = "#/"; return; }
  document.body.className = "td";
  const head = h("div", { class: "td-clock", id: "td-clock" });
  const controls = h("div", { class: "controls" });
  const players = h("div", { class: "card", id: "players" });
  const tables = h("div", { class: "card", id: "tables" });
  const side = h("div", { class: "card", id: "side" });
  const structure = h("div", { class: "card wide", id: "structure" });
  const settings = h("div", { class: "card", id: "settings" });
  const share = h("div", { class: "card span2", id: "share" }, h("button", { class: "btn", id: "mint-screens", onclick: () => shareLinks(db, share) }, "Links for screens"));
  let w = null;
  mount(h("section", { class: "td-grid" },
    h("div", { class: "card wide" }, h("p", { class: "eyebrow" }, h("a", { href: "#/" }, "Felt"), ` · ${db} `, connBadge(), healthBadge(() => w && w.kick())), head, controls),
    players, tables, side, settings, share, structure));
  // Brings a tournament made before the latest schema up to date (applied versions are skipped).
  await api("POST", `/api/v1/db/${encodeURIComponent(db)}/migrations`, { migrations: MIGRATIONS }, authFor(db));
  let state = null;
  const paint = clockPainter(head);
  const renderClock = () => paint(state);
  everyTick(renderClock);
  w = watchState(db, (s) => {
    state = s;
    renderClock();
    const c = clockAt(s.clock, s.levels, s.serverNow());
    const btn = (id, label, fn, cls = "btn") => h("button", { class: cls, id, onclick: (e) => doing(e.currentTarget, () => fn(clockActions(db, state))) }, label);
    fill(controls,
      s.clock.running && !c.ended ? btn("pause", "Pause", (a) => a.pause(), "btn primary") : btn("start", "Start clock", (a) => a.start(), "btn primary"),
      btn("prev-level", "◀ Level", (a) => a.go(-1)),
      btn("next-level", "Level ▶", (a) => a.go(1)));
    playersCard(db, s, players);
    tablesCard(db, s, tables);
    sideCard(s, side);
    whenNotTyping(structure, () => structureCard(db, s, structure));
    whenNotTyping(settings, () => settingsCard(db, s, settings));
  });
}

/**
 * Runs `render` (which refills `card`) now, or, while the TD is typing in one of the card's
 * fields, once focus leaves the card, with the newest state: a state arriving meanwhile must
 * not wipe a half-typed level or payout. (Focus moving to the card's own Save button keeps the
 * render waiting, so the click is not lost; the save's own new state then renders it.)
 */
function whenNotTyping(card, render) {
  const typing = () => card.contains(document.activeElement) && document.activeElement.matches("input, select, textarea");
  card.pendingRender = render;
  if (!card.dataset.waits) {
    card.dataset.waits = "1";
    card.addEventListener("focusout", () => setTimeout(() => {
      if (card.pendingRender && !card.contains(document.activeElement)) {
        const r = card.pendingRender;
        card.pendingRender = null;
        r();
      }
    }, 0));
  }
  if (!typing()) {
    card.pendingRender = null;
    render();
  }
}

function connBadge() {
  return h("span", { id: "conn", class: "conn-badge", "data-conn": "connecting" }, "Connecting…");
}

/** What is open now: late registration, rebuys, add-ons (the same rules as the schema's triggers). */
function periods(s) {
  const t = s.tournament || {};
  const now = s.serverNow();
  const lv = levelNow(s, now);
  const out = [];
  if (canRegister(s, now)) out.push(t.late_reg_until_level ? `Registration open through level ${t.late_reg_until_level}` : "Registration open");
  if (lv !== null && lv <= (t.rebuy_until_level || 0)) out.push(`Rebuys through level ${t.rebuy_until_level}`);
  if (t.addon_chips && canAddon(s, { status: "seated", addons: 0 }, now)) out.push(`Add-ons open: ${num(t.addon_chips)} chips for ${num(t.addon_cost)}`);
  return out.join(" · ");
}

function clockBlock(s) {
  const c = clockAt(s.clock, s.levels, s.serverNow());
  if (!c) return [h("p", { class: "muted" }, "No structure yet.")];
  const next = s.levels[c.index + 1];
  const st = stats(s);
  return [
    h("div", { class: "lvl" }, c.level.is_break ? "Break" : `Level ${c.level.level}`),
    h("div", { class: `time${c.running ? "" : " paused"}`, id: "time" }, fmtTime(c.remaining)),
    h("div", { class: "blinds", id: "blinds" }, blinds(c.level)),
    h("div", { class: "next", id: "next-level-info" }, next ? `Next: ${blinds(next)} · ${fmtTime(next.duration_ms)}` : "Last level"),
    h("div", { class: "facts" },
      h("span", {}, h("b", { id: "players-left" }, String(st.alive)), ` of ${st.entries} left`),
      h("span", { title: st.counted ? "mean of the recorded chip counts" : "chips in play / players left" }, "Avg stack ", h("b", { id: "avg-stack" }, num(st.avg))),
      h("span", {}, "Chips ", h("b", { id: "chips-in-play" }, num(st.chips))),
      h("span", {}, "Rebuys ", h("b", { id: "rebuys" }, String(st.rebuys))),
      h("span", {}, "Add-ons ", h("b", { id: "addons" }, String(st.addons))),
      h("span", {}, "Pool ", h("b", { id: "pool" }, num(st.pool)))),
    h("div", { class: "periods", id: "periods" }, periods(s)),
    c.running ? null : h("div", { class: "state", id: "clock-state" }, c.ended ? "Final level ended" : "Paused"),
  ];
}

function playersCard(db, s, card) {
  const input = h("input", { id: "player-name", placeholder: "Player name", maxlength: 60, required: true });
  const form = h("form", { class: "row", id: "add-player" }, input, h("button", { class: "btn", type: "submit" }, "Add"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = input.value.trim();
    if (!name) return;
    doing(form.querySelector("button"), async () => { await addPlayer(db, s, name); input.value = ""; });
  });
  const now = s.serverNow();
  const alive = s.players.filter((p) => p.status !== "busted");
  const busted = s.players.filter((p) => p.status === "busted").sort((a, b) => a.place - b.place);
  const chipsForm = (p) => {
    const inp = h("input", { class: "chips-in", type: "number", min: 0, step: 1, "data-chips": p.name, placeholder: "chips", value: p.chips ?? "" });
    const f = h("form", { class: "chips-form" }, inp, h("button", { class: "btn small", type: "submit", "data-count": p.name, title: "Record this stack" }, "✓"));
    f.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = inp.value.trim();
      doing(f.querySelector("button"), () => countChips(db, p.id, v === "" ? null : Math.round(Number(v))));
    });
    return f;
  };
  fill(card, h("h2", {}, `Players (${alive.length})`), form,
    canRegister(s, now) ? null : h("p", { class: "muted", id: "reg-closed" }, `Late registration closed after level ${s.tournament.late_reg_until_level}`),
    h("ul", { class: "list players" }, alive.map((p) => h("li", { "data-player": p.id },
      h("span", { class: "pname" }, p.name,
        p.rebuys ? h("span", { class: "muted" }, ` ·${p.rebuys}R`) : null,
        p.addons ? h("span", { class: "muted" }, ` ·${p.addons}A`) : null),
      h("span", { class: "muted" }, p.status === "seated" ? `T${p.table_no} · S${p.seat}` : "unseated"),
      chipsForm(p),
      h("span", { class: "acts" },
        canRebuy(s, p, now) ? h("button", { class: "btn small", "data-rebuy": p.name, title: "At or below the starting stack", onclick: (e) => doing(e.currentTarget, () => rebuy(db, s, p.id)) }, "Rebuy") : null,
        canAddon(s, p, now) ? h("button", { class: "btn small", "data-addon": p.name, onclick: (e) => doing(e.currentTarget, () => addon(db, s, p.id)) }, "Add-on") : null,
        h("button", { class: "btn small danger", "data-bust": p.name, onclick: (e) => doing(e.currentTarget, () => bust(db, p.id)) }, "Bust"))))),
    busted.length ? h("details", { open: true }, h("summary", {}, `Busted (${busted.length})`),
      h("ol", { class: "list" }, busted.map((p) => h("li", { "data-player": p.id },
        h("span", { class: "pname" }, `${p.place}. ${p.name}`),
        h("button", { class: "btn small", "data-undo": p.name, title: "Undo this bust: back to their seat", onclick: (e) => doing(e.currentTarget, () => undoBust(db, s, p.id)) }, "Undo"),
        canRebuy(s, p, now) ? h("button", { class: "btn small", "data-rebuy": p.name, title: `Rebuys through level ${s.tournament.rebuy_until_level}`,
          onclick: (e) => doing(e.currentTarget, () => rebuy(db, s, p.id)) }, "Rebuy") : null)))) : null);
}

/** The structure: played levels as they were, the ones still to come editable, removable, and a new one insertable. */
function structureCard(db, s, card) {
  const cur = levelNow(s, s.serverNow());
  const field = (n, k, v, extra = {}) => h("input", { type: "number", min: 0, id: `lvl-${n}-${k}`, value: v, ...extra });
  const read = (n) => {
    const v = (k) => Number(card.querySelector(`#lvl-${n}-${k}`).value);
    const isBreak = card.querySelector(`#lvl-${n}-break`).checked;
    return { sb: isBreak ? 0 : Math.round(v("sb")), bb: isBreak ? 0 : Math.round(v("bb")), ante: isBreak ? 0 : Math.round(v("ante")), duration_ms: Math.max(1000, Math.round(v("min") * 60000)), is_break: isBreak ? 1 : 0 };
  };
  const rowFor = (l) => {
    const played = l.level <= cur;
    return h("tr", { "data-level": l.level, class: played ? "played" : l.level === cur + 1 ? "upcoming" : "" },
      h("td", {}, String(l.level)),
      played
        ? [h("td", { colspan: 4 }, l.is_break ? "Break" : blinds(l)), h("td", {}, fmtTime(l.duration_ms)), h("td", { class: "muted" }, l.level === cur ? "now" : "played")]
        : [h("td", {}, field(l.level, "sb", l.sb)), h("td", {}, field(l.level, "bb", l.bb)), h("td", {}, field(l.level, "ante", l.ante)),
          h("td", {}, h("input", { type: "checkbox", id: `lvl-${l.level}-break`, checked: !!l.is_break, title: "Break" })),
          h("td", {}, field(l.level, "min", Math.round((l.duration_ms / 60000) * 100) / 100, { step: "any", min: 0.01 })),
          h("td", { class: "row-actions" },
            h("button", { class: "btn small", "data-save-level": l.level, onclick: (e) => doing(e.currentTarget, () => editStructure(db, s, "edit", l.level, read(l.level))) }, "Save"),
            h("button", { class: "btn small danger", "data-remove-level": l.level, onclick: (e) => doing(e.currentTarget, () => editStructure(db, s, "remove", l.level)) }, "✕"))]);
  };
  const last = s.levels[s.levels.length - 1];
  const ins = { level: (last ? last.level : 0) + 1, sb: last ? last.sb * 2 : 25, bb: last ? last.bb * 2 : 50, ante: last ? last.ante * 2 : 0, duration_ms: last ? last.duration_ms : 1200000, is_break: 0 };
  const at = h("input", { type: "number", min: cur + 1, id: "insert-at", value: ins.level, title: "becomes level" });
  const insertRow = h("tr", { class: "insert" }, h("td", {}, at), h("td", {}, field("new", "sb", ins.sb)), h("td", {}, field("new", "bb", ins.bb)),
    h("td", {}, field("new", "ante", ins.ante)), h("td", {}, h("input", { type: "checkbox", id: "lvl-new-break", title: "Break" })),
    h("td", {}, field("new", "min", Math.round((ins.duration_ms / 60000) * 100) / 100, { step: "any", min: 0.01 })),
    h("td", {}, h("button", { class: "btn small", id: "insert-level", onclick: (e) => doing(e.currentTarget, () => editStructure(db, s, "insert", Number(at.value), read("new"))) }, "Insert")));
  fill(card, h("h2", {}, "Structure"),
    h("p", { class: "muted" }, "Levels after the one being played can be edited, removed or inserted (later ones renumber; the rebuy, registration and add-on periods follow their level)."),
    h("div", { class: "scroll" }, h("table", { class: "levels" },
      h("thead", {}, h("tr", {}, ["#", "Small", "Big", "Ante", "Break", "Min", ""].map((x) => h("th", {}, x)))),
      h("tbody", {}, s.levels.map(rowFor), insertRow))));
}

/** Periods, add-on terms and payouts; saved as one audited action. */
function settingsCard(db, s, card) {
  const t = s.tournament;
  const f = (name, label, value, extra = {}) => h("label", {}, label, h("input", { name, id: `set-${name}`, value: value ?? "", ...extra }));
  const err = h("p", { class: "error", id: "settings-error" });
  const form = h("form", { class: "grid", id: "settings-form" },
    f("rebuy_until_level", "Rebuys through level (0: none)", t.rebuy_until_level, { type: "number", min: 0 }),
    f("late_reg_until_level", "Registration through level (blank: always)", t.late_reg_until_level, { type: "number", min: 1 }),
    f("addon_chips", "Add-on chips (0: none)", t.addon_chips, { type: "number", min: 0 }),
    f("addon_cost", "Add-on cost", t.addon_cost, { type: "number", min: 0 }),
    f("addon_until_level", "Add-ons through level", t.addon_until_level, { type: "number", min: 0 }),
    f("payouts", "Payouts % (sum 100)", t.payouts.join(", ")),
    err, h("button", { class: "btn", type: "submit", id: "save-settings" }, "Save settings"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const v = (n) => form.querySelector(`[name=${n}]`).value.trim();
    const p = parsePayouts(v("payouts"));
    if (p.error) { err.textContent = p.error; return; }
    const int = (n) => Math.round(Number(v(n) || 0));
    doing(form.querySelector("button"), () => saveSettings(db, {
      rebuy_until_level: int("rebuy_until_level"), late_reg_until_level: v("late_reg_until_level") === "" ? null : int("late_reg_until_level"),
      addon_chips: int("addon_chips"), addon_cost: int("addon_cost"), addon_until_level: int("addon_until_level"), payouts: p.payouts,
    }));
  });
  fill(card, h("h2", {}, "Settings"), form);
}

function tablesCard(db, s, card) {
  const open = s.tables.filter((t) => t.open);
  const sugg = balance(s);
  fill(card, h("h2", {}, "Tables"),
    h("div", { class: "row" }, h("button", { class: "btn", id: "seat-draw", onclick: (e) => doing(e.currentTarget, () => drawSeats(db, s)) }, "Seat draw")),
    h("div", { class: "tables" }, open.map((t) => {
      const at = s.players.filter((p) => p.status === "seated" && p.table_no === t.table_no).sort((a, b) => a.seat - b.seat);
      return h("div", { class: "table", "data-table": t.table_no },
        h("div", { class: "table-head" }, h("b", {}, `Table ${t.table_no}`), h("span", { class: "muted" }, `${at.length}/${t.seats}`),
          open.length > 1 ? h("button", { class: "btn small", "data-break": t.table_no, onclick: (e) => doing(e.currentTarget, () => doBreak(db, s, t.table_no)) }, "Break") : null),
        h("ol", { class: "seats" }, at.map((p) => h("li", {}, h("span", { class: "seat" }, p.seat), p.name))));
    })),
    sugg.length ? h("div", { class: "suggest", id: "suggestions" }, h("h3", {}, "Balancing"),
      sugg.map((x) => h("div", { class: "row" }, h("span", {}, x.text),
        h("button", { class: "btn small", onclick: (e) => doing(e.currentTarget, () => (x.kind === "break" ? doBreak(db, s, x.table) : move(db, x))) }, "Do it")))) : null);
}

/** 1st, 2nd, 3rd, 4th… */
function ordinal(n) {
  const teen = n % 100 >= 11 && n % 100 <= 13;
  return n + (teen ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th");
}

function sideCard(s, card) {
  const st = stats(s);
  const result = h("p", { id: "replay-result", class: "muted" });
  const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
  fill(card, h("h2", {}, "Prize pool"),
    h("p", { class: "big", id: "side-pool" }, num(st.pool)),
    h("p", { class: "muted", id: "side-entries" }, `${plural(st.entries, "entry", "entries")} + ${plural(st.rebuys, "rebuy")} + ${plural(st.addons, "add-on")} · ${num(st.chips)} chips in play`),
    h("p", { class: "muted" }, periods(s) || "Registration, rebuys and add-ons closed"),
    h("ol", { class: "list", id: "side-payouts" }, st.payouts.map((p, i) => h("li", {}, h("span", { class: "muted" }, `${ordinal(i + 1)} · ${p.pct}%`), num(p.amount)))),
    h("h2", {}, "Audit"),
    h("ol", { class: "list audit", id: "audit" }, (s.recent || []).map((a) => h("li", {}, h("span", { class: "muted" }, `#${a.seq} ${new Date(a.at_ms).toLocaleTimeString()}`), ` ${a.action}`))),
    h("button", { class: "btn", id: "verify-audit", onclick: () => verifyAudit(s, result) }, "Replay audit"), result);
}

/** Reads the whole audit, replays it, compares with the state on screen. */
async function verifyAudit(s, out) {
  const db = `felt-${s.tournament.slug}`;
  const [a, live] = await Promise.all([
    api("POST", `/api/v1/db/${db}/query/exec`, { sql: "SELECT action, args FROM audit ORDER BY seq", options: { max_rows: 5000 } }, authFor(db)),
    api("POST", `/api/v1/db/${db}/query/exec`, { sql: STATE_SQL }, authFor(db)),
  ]);
  const rebuilt = replay(a.rows.map(([action, args]) => ({ action, args: JSON.parse(args) })));
  const now = comparable(JSON.parse(live.rows[0][0]));
  const same = canonical(rebuilt) === canonical(now);
  out.textContent = same ? `Replay of ${a.rows.length} audit events equals the state ✓` : "Replay differs from the state ✗";
  out.className = same ? "ok" : "error";
  probe.replayEqual = same;
}

/** Read-only screen links, as text and as QR codes (drawn here: qr.js, no library, no CDN). */
async function shareLinks(db, card) {
  try {
    const slug = db.slice(5);
    const r = await api("POST", `/api/v1/db/${encodeURIComponent(db)}/invites`,
      { room: slug, scopes: SCREEN_SCOPES, ttl_secs: 7 * 86400, max_uses: 1000 }, authFor(db));
    const link = (v) => `${location.origin}/apps/felt/#/join/${v}/${r.token}`;
    const qr = (id, text) => {
      const box = h("div", { class: "qr", id });
      box.append(qrSvg(text));
      return box;
    };
    fill(card, h("h2", {}, "Screens"),
      h("p", { class: "muted" }, "Read-only links for this tournament only (valid a week)."),
      h("div", { class: "qr-pair" },
        h("div", {}, h("label", {}, "Big screen", h("input", { id: "clock-link", readonly: true, value: link("clock") })), qr("clock-qr", link("clock"))),
        h("div", {}, h("label", {}, "Phones", h("input", { id: "player-link", readonly: true, value: link("player") })), qr("player-qr", link("player")))));
  } catch (e) { toast(e.message, true); }
}

// ---------- screens ----------
async function joinView(kind, token) {
  mount(h("section", { class: "card" }, h("p", { class: "muted", id: "joining" }, "Joining…")));
  const headers = {};
  const c = await api("GET", "/api/v1/pow/challenge");
  if (c.difficulty > 0) headers["Patch-PoW"] = `${c.challenge}:${(await solve(c.challenge, c.difficulty)).nonce}`;
  const r = await api("POST", "/api/v1/invites/redeem", { token, member: kind === "clock" ? "screen" : "phone" }, null, headers);
  sessionStorage.setItem(screenKey(r.db_id), JSON.stringify(r));
  location.replace(`#/${kind === "clock" ? "clock" : "player"}/${encodeURIComponent(r.db_id)}`);
}

function clockView(db) {
  document.body.className = "screen";
  const title = h("div", { class: "title", id: "title" });
  const main = h("div", { class: "big-clock", id: "big-clock" });
  let w = null;
  mount(h("section", { class: "screen-wrap" }, title, main, h("div", { class: "muted conn" }, connBadge(), healthBadge(() => w && w.kick()))));
  let state = null;
  const paint = clockPainter(main);
  const render = () => paint(state);
  everyTick(render);
  w = watchState(db, (s) => { state = s; title.textContent = s.tournament ? s.tournament.name : db; render(); }, { cache: true });
}

function playerView(db) {
  document.body.className = "phone";
  const head = h("div", { class: "td-clock", id: "phone-clock" });
  const body = h("div", { id: "phone-body" });
  let w = null;
  mount(h("section", { class: "phone-wrap" }, h("h1", { id: "title" }), head, body, h("div", { class: "muted" }, connBadge(), healthBadge(() => w && w.kick()))));
  let state = null;
  const paint = clockPainter(head);
  const render = () => paint(state);
  everyTick(render);
  w = watchState(db, (s) => {
    state = s;
    document.getElementById("title").textContent = s.tournament ? s.tournament.name : db;
    render();
    const st = stats(s);
    const alive = s.players.filter((p) => p.status !== "busted").sort((a, b) => (a.table_no || 99) - (b.table_no || 99) || a.seat - b.seat);
    const busted = s.players.filter((p) => p.status === "busted").sort((a, b) => a.place - b.place);
    const extras = (p) => [p.rebuys ? `${p.rebuys} rebuy${p.rebuys > 1 ? "s" : ""}` : null, p.addons ? "add-on" : null, p.chips !== null && p.chips !== undefined ? `${num(p.chips)} chips` : null].filter(Boolean);
    fill(body,
      h("div", { class: "leader", id: "chip-leader" }, st.leader ? ["Chip leader ", h("b", {}, st.leader.name), ` · ${num(st.leader.chips)}`] : "Chip leader: no counts yet"),
      h("h2", {}, "Seats"),
      h("ul", { class: "list", id: "seats" }, alive.map((p) => h("li", {}, h("span", { class: "pname" }, p.name, extras(p).length ? h("span", { class: "muted" }, ` · ${extras(p).join(" · ")}`) : null), h("span", { class: "muted" }, p.table_no ? `Table ${p.table_no} · Seat ${p.seat}` : "not seated")))),
      h("h2", {}, "Payouts"),
      h("ol", { class: "list", id: "payouts" }, st.payouts.map((p, i) => h("li", {}, h("span", { class: "muted" }, ordinal(i + 1)), num(p.amount)))),
      busted.length ? h("h2", {}, "Eliminated") : null,
      h("ol", { class: "list", id: "eliminated" }, busted.map((p) => h("li", {}, `${p.place}. ${p.name}`))));
  }, { cache: true });
}

// The app shell is cached by a service worker (sw.js) so a screen reloaded without the network
// still starts; it needs a secure context (https, localhost), elsewhere localStorage alone keeps
// the last state.
if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("sw.js").then(() => { probe.sw = "registered"; }, (e) => { probe.sw = `failed: ${e.message}`; });
}

// The time each audit seq first reached the DOM (a MutationObserver, high-resolution wall
// clock): what the latency test compares with the TD's click.
new MutationObserver(() => {
  const st = probe.state;
  if (!st || st.cached) return;
  const seq = st.audit_seq || 0;
  if (!(seq in probe.shown)) probe.shown[seq] = performance.timeOrigin + performance.now();
}).observe(view, { childList: true, subtree: true, characterData: true });

loadMe().then(route);
