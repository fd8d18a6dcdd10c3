// Felt: a poker tournament director on Patchwork's public API only.
// Hash routes: #/ (tournaments), #/td/{db} (TD console), #/clock/{db} (big screen),
// #/player/{db} (phones), #/join/{clock|player}/{invite token} (a screen joins read-only).
// One document per tournament (`felt-{slug}`); schema.js holds the tables and the guarantees.

import { api, stream, ApiError } from "../shared/api.js";
import { MIGRATIONS, NOW_MS, STATE_SQL, SCREEN_SCOPES } from "./schema.js";
import { clockAt, fmtTime, blinds, stats, seatDraw, breakTable, balance, canRebuy, rebuySeat, replay, comparable, canonical } from "./felt.js";
import { solve } from "/apps/shared/pow.js";

const view = document.getElementById("view");
const whoami = document.getElementById("whoami");
let me = null; // the TD's session {subject, name, csrf_token} or null
let cleanup = [];

// What the tests read: the state shown, when each audit seq was first shown, the TD's actions.
// `opens` counts watch connections; `dropWatch()` cuts the current one (it reconnects).
const probe = { state: null, seen: {}, actions: [], stateSql: STATE_SQL, opens: 0 };
window.felt = probe;

// ---------- DOM helpers (text only: no HTML from data) ----------
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
function fill(el, ...kids) { el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false)); }
function mount(...kids) { fill(view, ...kids); }
function toast(text, bad = false) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 3000);
}
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
/** Watches the tournament; `render(state)` on every change. Server time offset kept too. */
function watchState(db, render) {
  let offset = 0;
  const s = stream(`/api/v1/db/${encodeURIComponent(db)}/query/watch`, {
    method: "POST",
    body: { sql: STATE_SQL, options: { heartbeat_seconds: 10 } },
    auth: authFor(db),
    onEvent(name, data) {
      if (name !== "snapshot" && name !== "update") return;
      const state = JSON.parse(data.rows[0][0]);
      offset = state.now_ms - Date.now();
      state.serverNow = () => Date.now() + offset;
      probe.state = state;
      const seq = state.audit_seq || 0;
      render(state);
      if (!(seq in probe.seen)) probe.seen[seq] = Date.now();
    },
    onDown(e) { const el = document.getElementById("conn"); if (el) el.textContent = `reconnecting… (${e.message})`; },
    onOpen() { probe.opens += 1; const el = document.getElementById("conn"); if (el) el.textContent = ""; },
  });
  probe.dropWatch = () => s.drop();
  cleanup.push(() => s.stop());
}

// ---------- Patchwork's readiness, shown on the console and every screen ----------
const HEALTH_EVERY_MS = 3000;
const HEALTH_TEXT = { ok: "Patchwork ready", not_ready: "Patchwork not ready", unreachable: "Patchwork unreachable" };
/**
 * A badge polling `GET /readyz` every few seconds: `data-health` is `ok` (200), `not_ready`
 * (any other answer, e.g. 503 while shutting down) or `unreachable` (no answer in 2 s).
 */
function healthBadge() {
  const el = h("span", { class: "health", id: "health", "data-health": "unknown", title: "GET /readyz" }, "…");
  const show = (k, why) => {
    el.dataset.health = k;
    el.textContent = HEALTH_TEXT[k];
    el.title = why ? `GET /readyz: ${why}` : "GET /readyz";
    probe.health = k;
  };
  let stopped = false;
  const poll = async () => {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 2000);
    try {
      const r = await fetch("/readyz", { cache: "no-store", credentials: "omit", signal: ctl.signal });
      if (!stopped) show(r.ok ? "ok" : "not_ready", r.ok ? "" : `HTTP ${r.status}`);
    } catch (e) {
      if (!stopped) show("unreachable", e.message);
    } finally { clearTimeout(t); }
  };
  poll();
  const timer = setInterval(poll, HEALTH_EVERY_MS);
  cleanup.push(() => { stopped = true; clearInterval(timer); });
  return el;
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
    err,
    h("button", { class: "btn primary", type: "submit", id: "create-btn" }, "Create"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const v = (n) => form.querySelector(`[name=${n}]`).value;
    try {
      const db = await createTournament({ name: v("name").trim(), buyIn: +v("buy_in"), stack: +v("stack"), seats: +v("seats"), minutes: +v("minutes"), rebuyUntil: +v("rebuy_level") });
      location.hash = `#/td/${encodeURIComponent(db)}`;
    } catch (e) { err.textContent = e.message; }
  });
  return form;
}

const STRUCTURE = [[25, 50, 0], [50, 100, 0], [75, 150, 0], [100, 200, 25], null, [150, 300, 25], [200, 400, 50], [300, 600, 75], [400, 800, 100], [600, 1200, 200]];

/** The document, FULL durability, schema, tournament row, levels and clock: one audit `create`. */
export async function createTournament({ name, buyIn, stack, seats, minutes, rebuyUntil = 0 }) {
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
  const t = { slug, name, buy_in: buyIn, rebuy_until_level: rebuyUntil, starting_stack: stack, seats_per_table: seats, payouts: [50, 30, 20] };
  await batch(db, "create", { ...t, levels }, [
    ["INSERT INTO tournament (id, slug, name, buy_in, rebuy_until_level, starting_stack, seats_per_table, payouts) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
      [slug, name, buyIn, rebuyUntil, stack, seats, JSON.stringify(t.payouts)]],
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
  const t0 = Date.now();
  const r = await api("POST", `/api/v1/db/${encodeURIComponent(db)}/query/batch`,
    { statements: [...statements.map(([sql, a]) => ({ sql, args: a || [] })), audit] }, authFor(db));
  const seq = r.results[r.results.length - 1].last_insert_id;
  probe.actions.push({ seq, action, t0, ack: Date.now() });
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

const addPlayer = (db, name) => batch(db, "add_player",
  { sql: "SELECT json_object('id', id, 'name', name) FROM players WHERE id = (SELECT max(id) FROM players)" },
  [[`INSERT INTO players (name, registered_at_ms) VALUES (?, ${NOW_MS})`, [name]]]);

const bust = (db, id) => batch(db, "bust",
  { sql: "SELECT json_object('player', id, 'place', place, 'at_ms', busted_at_ms) FROM players WHERE id = ?", args: [id] },
  [[`UPDATE players SET status = 'busted', table_no = NULL, seat = NULL, busted_at_ms = ${NOW_MS},
      place = (SELECT count(*) FROM players WHERE status != 'busted') WHERE id = ? AND status != 'busted'`, [id]]]);

/**
 * A busted player buys back in: one more rebuy (the pool grows by the buy-in), back in play at
 * the lowest free seat of the shortest open table (unseated when there is none). The schema's
 * triggers refuse it for a player not busted or after the rebuy period, and move the players
 * busted after them up a place; the audit records what was stored.
 */
function rebuy(db, s, id) {
  const p = s.players.find((q) => q.id === id);
  if (!canRebuy(s, p, s.serverNow())) { toast("No rebuy: the player is not busted or the rebuy period is over", true); return Promise.resolve(); }
  const [t, seat] = rebuySeat(s) || [null, null];
  return batch(db, "rebuy",
    { sql: "SELECT json_object('player', id, 'rebuys', rebuys, 'table', table_no, 'seat', seat) FROM players WHERE id = ?", args: [id] },
    [["UPDATE players SET rebuys = rebuys + 1, status = CASE WHEN ?2 IS NULL THEN 'registered' ELSE 'seated' END, table_no = ?2, seat = ?3, place = NULL, busted_at_ms = NULL WHERE id = ?1",
      [id, t, seat]]]);
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
  const share = h("div", { class: "card", id: "share" }, h("button", { class: "btn", id: "mint-screens", onclick: () => shareLinks(db, share) }, "Links for screens"));
  mount(h("section", { class: "td-grid" },
    h("div", { class: "card wide" }, h("p", { class: "eyebrow" }, h("a", { href: "#/" }, "Felt"), ` · ${db}`, h("span", { id: "conn", class: "muted" }), healthBadge()), head, controls),
    players, tables, side, share));
  // Brings a tournament made before the latest schema up to date (applied versions are skipped).
  await api("POST", `/api/v1/db/${encodeURIComponent(db)}/migrations`, { migrations: MIGRATIONS }, authFor(db));
  let state = null;
  const renderClock = () => { if (state) fill(head, ...clockBlock(state)); };
  everyTick(renderClock);
  watchState(db, (s) => {
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
  });
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
    h("div", { class: "next" }, next ? `Next: ${blinds(next)}` : "Last level"),
    h("div", { class: "facts" },
      h("span", {}, h("b", { id: "players-left" }, String(st.alive)), ` of ${st.entries} left`),
      h("span", {}, "Avg stack ", h("b", { id: "avg-stack" }, num(st.avg))),
      h("span", {}, "Rebuys ", h("b", { id: "rebuys" }, String(st.rebuys))),
      h("span", {}, "Pool ", h("b", { id: "pool" }, num(st.pool)))),
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
    doing(form.querySelector("button"), async () => { await addPlayer(db, name); input.value = ""; });
  });
  const alive = s.players.filter((p) => p.status !== "busted");
  const busted = s.players.filter((p) => p.status === "busted").sort((a, b) => a.place - b.place);
  fill(card, h("h2", {}, `Players (${alive.length})`), form,
    h("ul", { class: "list players" }, alive.map((p) => h("li", { "data-player": p.id },
      h("span", { class: "pname" }, p.name, p.rebuys ? h("span", { class: "muted" }, ` ·${p.rebuys}R`) : null),
      h("span", { class: "muted" }, p.status === "seated" ? `T${p.table_no} · S${p.seat}` : "unseated"),
      h("button", { class: "btn small danger", "data-bust": p.name, onclick: (e) => doing(e.currentTarget, () => bust(db, p.id)) }, "Bust")))),
    busted.length ? h("details", { open: true }, h("summary", {}, `Busted (${busted.length})`),
      h("ol", { class: "list" }, busted.map((p) => h("li", { "data-player": p.id },
        h("span", { class: "pname" }, `${p.place}. ${p.name}`),
        s.tournament.rebuy_until_level ? h("button", { class: "btn small", "data-rebuy": p.name, title: `Rebuys through level ${s.tournament.rebuy_until_level}`,
          onclick: (e) => doing(e.currentTarget, () => rebuy(db, s, p.id)) }, "Rebuy") : null)))) : null);
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
  fill(card, h("h2", {}, "Prize pool"),
    h("p", { class: "big", id: "side-pool" }, num(st.pool)),
    h("p", { class: "muted" }, `${st.entries} entries + ${st.rebuys} rebuy${st.rebuys === 1 ? "" : "s"}` +
      (s.tournament.rebuy_until_level ? ` · rebuys through level ${s.tournament.rebuy_until_level}` : " · no rebuys")),
    h("ol", { class: "list" }, st.payouts.map((p, i) => h("li", {}, h("span", { class: "muted" }, ordinal(i + 1)), num(p.amount)))),
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

async function shareLinks(db, card) {
  try {
    const slug = db.slice(5);
    const r = await api("POST", `/api/v1/db/${encodeURIComponent(db)}/invites`,
      { room: slug, scopes: SCREEN_SCOPES, ttl_secs: 7 * 86400, max_uses: 1000 }, authFor(db));
    const link = (v) => `${location.origin}/apps/felt/#/join/${v}/${r.token}`;
    fill(card, h("h2", {}, "Screens"),
      h("p", { class: "muted" }, "Read-only links for this tournament only (valid a week)."),
      h("label", {}, "Big screen", h("input", { id: "clock-link", readonly: true, value: link("clock") })),
      h("label", {}, "Phones", h("input", { id: "player-link", readonly: true, value: link("player") })));
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
  mount(h("section", { class: "screen-wrap" }, title, main, h("div", { class: "muted conn" }, h("span", { id: "conn" }), healthBadge())));
  let state = null;
  const render = () => { if (state) fill(main, ...clockBlock(state)); };
  everyTick(render);
  watchState(db, (s) => { state = s; title.textContent = s.tournament ? s.tournament.name : db; render(); });
}

function playerView(db) {
  document.body.className = "phone";
  const head = h("div", { class: "td-clock", id: "phone-clock" });
  const body = h("div", { id: "phone-body" });
  mount(h("section", { class: "phone-wrap" }, h("h1", { id: "title" }), head, body, h("div", { class: "muted" }, h("span", { id: "conn" }), healthBadge())));
  let state = null;
  const render = () => { if (state) fill(head, ...clockBlock(state)); };
  everyTick(render);
  watchState(db, (s) => {
    state = s;
    document.getElementById("title").textContent = s.tournament ? s.tournament.name : db;
    render();
    const st = stats(s);
    const alive = s.players.filter((p) => p.status !== "busted").sort((a, b) => (a.table_no || 99) - (b.table_no || 99) || a.seat - b.seat);
    const busted = s.players.filter((p) => p.status === "busted").sort((a, b) => a.place - b.place);
    fill(body, 
      h("h2", {}, "Seats"),
      h("ul", { class: "list" }, alive.map((p) => h("li", {}, h("span", { class: "pname" }, p.name, p.rebuys ? h("span", { class: "muted" }, ` · ${p.rebuys} rebuy${p.rebuys > 1 ? "s" : ""}`) : null), h("span", { class: "muted" }, p.table_no ? `Table ${p.table_no} · Seat ${p.seat}` : "not seated")))),
      h("h2", {}, "Payouts"),
      h("ol", { class: "list" }, st.payouts.map((p, i) => h("li", {}, h("span", { class: "muted" }, ordinal(i + 1)), num(p.amount)))),
      busted.length ? h("h2", {}, "Eliminated") : null,
      h("ol", { class: "list", id: "eliminated" }, busted.map((p) => h("li", {}, `${p.place}. ${p.name}`))));
  });
}

loadMe().then(route);
