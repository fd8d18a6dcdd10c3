// Felt's tournament logic, pure functions over the state JSON (schema.js STATE_SQL): the clock
// derived from its stored start, seating, table breaking and balancing, and the audit replay.

/**
 * Where the clock is at server time `now`: `{index, level, remaining, running, ended}`. A running
 * clock rolls through levels on its own: the time past the stored level's end goes into the
 * next ones (nothing ticks in the database).
 */
export function clockAt(clock, levels, now) {
  if (!clock || !levels || !levels.length) return null;
  let index = Math.max(0, levels.findIndex((l) => l.level === clock.level));
  let remaining = clock.remaining_ms;
  if (clock.running) {
    remaining -= now - clock.started_at_ms;
    while (remaining <= 0 && index + 1 < levels.length) {
      index += 1;
      remaining += levels[index].duration_ms;
    }
  }
  const ended = remaining <= 0;
  return { index, level: levels[index], remaining: Math.max(0, remaining), running: !!clock.running && !ended, ended };
}

/** `mm:ss` (or `h:mm:ss`). */
export function fmtTime(ms) {
  const s = Math.ceil(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return `${h ? `${h}:` : ""}${mm}:${String(sec).padStart(2, "0")}`;
}

export function blinds(l) {
  if (!l) return "";
  if (l.is_break) return "Break";
  return `${l.sb.toLocaleString("en")} / ${l.bb.toLocaleString("en")}${l.ante ? ` (${l.ante.toLocaleString("en")})` : ""}`;
}

/**
 * Players left, entries, rebuys, add-ons, chips in play, average stack, prize pool, payouts,
 * chip leader. The pool is a buy-in per entry and rebuy plus the add-on cost per add-on; chips in
 * play a starting stack per entry and rebuy plus the add-on chips per add-on. The average stack
 * is the mean of the TD's recorded counts when every player still in has one (`counted`), else
 * chips in play / players left.
 */
export function stats(s) {
  const t = s.tournament || {};
  const players = s.players || [];
  const alive = players.filter((p) => p.status !== "busted");
  const entries = players.length;
  const rebuys = players.reduce((n, p) => n + (p.rebuys || 0), 0);
  const addons = players.reduce((n, p) => n + (p.addons || 0), 0);
  const chips = (entries + rebuys) * (t.starting_stack || 0) + addons * (t.addon_chips || 0);
  const pool = (entries + rebuys) * (t.buy_in || 0) + addons * (t.addon_cost || 0);
  const pcts = t.payouts || [];
  const payouts = pcts.map((pct, i) => ({ place: i + 1, pct, amount: Math.floor((pool * pct) / 100) }));
  const counts = alive.filter((p) => p.chips !== null && p.chips !== undefined);
  const counted = alive.length > 0 && counts.length === alive.length;
  const avg = !alive.length ? 0 : Math.round(counted ? counts.reduce((n, p) => n + p.chips, 0) / alive.length : chips / alive.length);
  const leader = counts.slice().sort((a, b) => b.chips - a.chips || a.id - b.id)[0] || null;
  return { alive: alive.length, entries, rebuys, addons, chips, avg, counted, pool, payouts, leader };
}

/** Open seats of the open tables, as [table_no, seat] pairs. */
function openSeats(tables, players, exceptTable) {
  const taken = new Set(players.filter((p) => p.status === "seated").map((p) => `${p.table_no}:${p.seat}`));
  const out = [];
  for (const t of tables) {
    if (!t.open || t.table_no === exceptTable) continue;
    for (let seat = 1; seat <= t.seats; seat++) if (!taken.has(`${t.table_no}:${seat}`)) out.push([t.table_no, seat]);
  }
  return out;
}

function counts(tables, players) {
  const c = new Map(tables.filter((t) => t.open).map((t) => [t.table_no, 0]));
  for (const p of players) if (p.status === "seated" && c.has(p.table_no)) c.set(p.table_no, c.get(p.table_no) + 1);
  return c;
}

/**
 * A random seat draw of everyone not busted: as few tables as fit them, filled round robin so
 * tables differ by at most one. `{tables: [{table_no, seats}], seats: [[player, table, seat]]}`.
 */
export function seatDraw(s, random = Math.random) {
  const per = s.tournament.seats_per_table;
  const alive = (s.players || []).filter((p) => p.status !== "busted").map((p) => p.id);
  for (let i = alive.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [alive[i], alive[j]] = [alive[j], alive[i]];
  }
  const n = Math.max(1, Math.ceil(alive.length / per));
  const tables = Array.from({ length: n }, (_, i) => ({ table_no: i + 1, seats: per }));
  const seatOrder = tables.map(() => shuffled(per, random));
  const seats = alive.map((id, i) => [id, (i % n) + 1, seatOrder[i % n][Math.floor(i / n)]]);
  return { tables, seats };
}

function shuffled(n, random) {
  const a = Array.from({ length: n }, (_, i) => i + 1);
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** Breaking `tableNo`: its players go to the open seats of the shortest other tables. */
export function breakTable(s, tableNo) {
  const players = s.players || [];
  const tables = s.tables || [];
  const c = counts(tables, players);
  c.delete(tableNo);
  const free = openSeats(tables, players, tableNo);
  const moves = [];
  for (const p of players.filter((q) => q.status === "seated" && q.table_no === tableNo)) {
    const target = [...c.entries()].filter(([t]) => free.some(([ft]) => ft === t)).sort((a, b) => a[1] - b[1] || a[0] - b[0])[0];
    if (!target) return { error: "not enough open seats at the other tables" };
    const i = free.findIndex(([ft]) => ft === target[0]);
    const [t, seat] = free.splice(i, 1)[0];
    c.set(t, c.get(t) + 1);
    moves.push([p.id, t, seat]);
  }
  return { table: tableNo, moves };
}

/** The level record the clock is at, at server time `now` (null without a structure). */
export function levelNow(s, now) {
  const c = clockAt(s.clock, s.levels, now);
  return c ? c.level.level : null;
}

/**
 * Whether player `p` may rebuy at server time `now`: busted, or still in with a recorded stack at
 * or below the starting stack; and the clock at or before `rebuy_until_level` (the schema's
 * trigger checks the same).
 */
export function canRebuy(s, p, now) {
  if (!p) return false;
  const t = s.tournament || {};
  const inPlay = p.status !== "busted";
  if (inPlay && (p.chips === null || p.chips === undefined || p.chips > t.starting_stack)) return false;
  const lv = levelNow(s, now);
  return lv !== null && lv <= (t.rebuy_until_level || 0);
}

/**
 * Whether player `p` may take an add-on at `now`: still in, none yet, add-ons offered, and the
 * clock at a break or at/after the last rebuy level, at or before `addon_until_level`.
 */
export function canAddon(s, p, now) {
  const t = s.tournament || {};
  if (!p || p.status === "busted" || p.addons || !t.addon_chips) return false;
  const c = clockAt(s.clock, s.levels, now);
  if (!c) return false;
  const lv = c.level.level;
  return lv <= t.addon_until_level && (lv >= t.rebuy_until_level || !!c.level.is_break);
}

/** Whether registration is open at `now`: no limit, or the clock at or before the last late-registration level. */
export function canRegister(s, now) {
  const t = s.tournament || {};
  if (t.late_reg_until_level === null || t.late_reg_until_level === undefined) return true;
  const lv = levelNow(s, now);
  return lv === null || lv <= t.late_reg_until_level;
}

/** Where an undone bust sits again: the seat they left if its table is open and it is free, else a balanced seat. */
export function undoSeat(s, p) {
  const table = (s.tables || []).find((t) => t.table_no === p.busted_table && t.open);
  const taken = (s.players || []).some((q) => q.status === "seated" && q.table_no === p.busted_table && q.seat === p.busted_seat);
  if (table && p.busted_seat && !taken) return [p.busted_table, p.busted_seat];
  return rebuySeat(s);
}

/**
 * The structure after an edit (what the console sends, and what the schema's triggers allow:
 * only levels after `current` change). `op`: `edit` (level `n` gets `l`), `insert` (`l` becomes
 * level `n`, later ones renumbered up), `remove` (level `n` goes, later ones renumbered down).
 * Returns `{levels, shift(n)}` or `{error}`; `shift` moves a period's level number likewise.
 */
export function editLevels(levels, current, op, n, l) {
  if (n <= current) return { error: `level ${n} has been played` };
  const out = levels.map((x) => ({ ...x }));
  if (op === "edit") {
    const i = out.findIndex((x) => x.level === n);
    if (i < 0) return { error: `no level ${n}` };
    out[i] = { ...l, level: n };
    return { levels: out, shift: (k) => k };
  }
  if (op === "insert") {
    if (n > out.length + 1) return { error: `no level ${n - 1}` };
    for (const x of out) if (x.level >= n) x.level += 1;
    out.push({ ...l, level: n });
    out.sort((a, b) => a.level - b.level);
    return { levels: out, shift: (k) => (k !== null && k >= n ? k + 1 : k) };
  }
  if (op === "remove") {
    if (out.length <= 1 || !out.some((x) => x.level === n)) return { error: `no level ${n} to remove` };
    return { levels: out.filter((x) => x.level !== n).map((x) => (x.level > n ? { ...x, level: x.level - 1 } : x)), shift: (k) => (k !== null && k >= n ? k - 1 : k) };
  }
  return { error: `unknown edit ${op}` };
}

/** Payout percentages from text ("50, 30, 20"): positive, summing to 100; or `{error}`. */
export function parsePayouts(text) {
  const pcts = String(text).split(/[\s,;]+/).filter(Boolean).map(Number);
  if (!pcts.length || pcts.some((x) => !Number.isFinite(x) || x <= 0)) return { error: "payouts are positive percentages" };
  const sum = pcts.reduce((a, b) => a + b, 0);
  if (Math.abs(sum - 100) > 0.0001) return { error: `payouts sum to ${Math.round(sum * 1000) / 1000}, not 100` };
  return { payouts: pcts };
}

/** Where a rebuying player sits: the lowest free seat at the shortest open table, or null. */
export function rebuySeat(s) {
  const players = s.players || [];
  const tables = s.tables || [];
  const c = counts(tables, players);
  const free = openSeats(tables, players);
  const best = free.sort((a, b) => c.get(a[0]) - c.get(b[0]) || a[0] - b[0] || a[1] - b[1])[0];
  return best || null;
}

/**
 * Balancing suggestions: while the fullest and the shortest open table differ by more than one,
 * move a player from the fullest to an open seat at the shortest. Also suggests breaking the
 * shortest table when the others have room for its players.
 */
export function balance(s) {
  const players = s.players || [];
  const tables = s.tables || [];
  const c = counts(tables, players);
  const out = [];
  if (c.size > 1) {
    const sorted = [...c.entries()].sort((a, b) => a[1] - b[1]);
    const [shortT, shortN] = sorted[0];
    const room = tables.filter((t) => t.open && t.table_no !== shortT).reduce((acc, t) => acc + t.seats - (c.get(t.table_no) || 0), 0);
    if (shortN <= room) out.push({ kind: "break", table: shortT, text: `Break table ${shortT}: its ${shortN} fit at the other tables` });
    const [fullT, fullN] = sorted[sorted.length - 1];
    if (fullN - shortN > 1) {
      const free = openSeats(tables, players).filter(([t]) => t === shortT);
      const mover = players.filter((p) => p.status === "seated" && p.table_no === fullT).sort((a, b) => b.seat - a.seat)[0];
      if (free.length && mover) out.push({ kind: "move", player: mover.id, table: shortT, seat: free[0][1], text: `Move ${mover.name} from table ${fullT} to table ${shortT} seat ${free[0][1]}` });
    }
  }
  return out;
}

/**
 * Rebuilds the tournament from its audit alone (oldest first). Each action's arguments are
 * what it did (ids, places, seats, the clock it stored), so replay needs no randomness or clock.
 */
export function replay(audit) {
  const st = { tournament: null, levels: [], clock: null, tables: [], players: [] };
  const player = (id) => st.players.find((p) => p.id === id);
  const seat = ([id, t, s]) => Object.assign(player(id), { status: "seated", table_no: t, seat: s });
  // A busted player back in play: the players busted after them move up a place (the schema's
  // triggers do the same).
  const unbust = (p) => { for (const q of st.players) if (q.status === "busted" && q.place < p.place) q.place += 1; };
  const back = (a) => ({ status: a.table === null || a.table === undefined ? "registered" : "seated", table_no: a.table ?? null, seat: a.seat ?? null, place: null, busted_at_ms: null, busted_table: null, busted_seat: null });
  const PERIODS = ["rebuy_until_level", "late_reg_until_level", "addon_until_level"];
  for (const { action, args: a } of audit) {
    switch (action) {
      case "create":
        st.tournament = {
          slug: a.slug, name: a.name, buy_in: a.buy_in, rebuy_until_level: a.rebuy_until_level ?? 0, starting_stack: a.starting_stack,
          seats_per_table: a.seats_per_table, payouts: a.payouts, late_reg_until_level: a.late_reg_until_level ?? null,
          addon_chips: a.addon_chips ?? 0, addon_cost: a.addon_cost ?? 0, addon_until_level: a.addon_until_level ?? 0,
        };
        st.levels = a.levels.map((l) => ({ ...l }));
        st.clock = { level: a.levels[0].level, running: 0, started_at_ms: null, remaining_ms: a.levels[0].duration_ms };
        break;
      case "clock":
        st.clock = { level: a.level, running: a.running, started_at_ms: a.started_at_ms, remaining_ms: a.remaining_ms };
        break;
      case "add_player":
        st.players.push({ id: a.id, name: a.name, status: "registered", table_no: null, seat: null, place: null, busted_at_ms: null, rebuys: 0, addons: 0, chips: null, undos: 0, busted_table: null, busted_seat: null });
        if (a.table !== null && a.table !== undefined) seat([a.id, a.table, a.seat]);
        break;
      case "bust": {
        const p = player(a.player);
        Object.assign(p, { status: "busted", table_no: null, seat: null, place: a.place, busted_at_ms: a.at_ms, chips: null, busted_table: a.table ?? null, busted_seat: a.seat ?? null });
        break;
      }
      case "seat_draw":
        for (const p of st.players) if (p.status === "seated") Object.assign(p, { status: "registered", table_no: null, seat: null });
        st.tables = a.tables.map((t) => ({ table_no: t.table_no, seats: t.seats, open: 1 }));
        a.seats.forEach(seat);
        break;
      case "break_table":
        a.moves.forEach(seat);
        st.tables.find((t) => t.table_no === a.table).open = 0;
        break;
      case "move":
        seat([a.player, a.table, a.seat]);
        break;
      case "rebuy": {
        const p = player(a.player);
        if (p.status === "busted") { unbust(p); Object.assign(p, back(a)); }
        Object.assign(p, { rebuys: a.rebuys, chips: a.chips ?? null });
        break;
      }
      case "undo_bust": {
        const p = player(a.player);
        unbust(p);
        Object.assign(p, back(a), { undos: a.undos });
        break;
      }
      case "addon":
        Object.assign(player(a.player), { addons: a.addons, chips: a.chips });
        break;
      case "chips":
        player(a.player).chips = a.chips;
        break;
      case "settings":
        Object.assign(st.tournament, a);
        break;
      case "structure":
        st.levels = a.levels.map((l) => ({ ...l }));
        for (const k of PERIODS) st.tournament[k] = a[k];
        break;
      default:
        throw new Error(`unknown audit action ${action}`);
    }
  }
  st.players.sort((x, y) => x.id - y.id);
  st.tables.sort((x, y) => x.table_no - y.table_no);
  return st;
}

/** The parts of the live state that replay rebuilds, for comparison. */
export function comparable(s) {
  return {
    tournament: s.tournament,
    levels: s.levels,
    clock: s.clock,
    tables: s.tables,
    players: s.players,
  };
}

/** Stable JSON (sorted keys) for comparing states. */
export function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  return JSON.stringify(v === undefined ? null : v);
}
