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

/** Players left, entries, rebuys, average stack, prize pool (a buy-in per entry and rebuy), payouts. */
export function stats(s) {
  const t = s.tournament || {};
  const players = s.players || [];
  const alive = players.filter((p) => p.status !== "busted").length;
  const entries = players.length;
  const rebuys = players.reduce((n, p) => n + (p.rebuys || 0), 0);
  const chips = (entries + rebuys) * (t.starting_stack || 0);
  const pool = (entries + rebuys) * (t.buy_in || 0);
  const pcts = t.payouts || [];
  const payouts = pcts.map((pct, i) => ({ place: i + 1, amount: Math.floor((pool * pct) / 100) }));
  return { alive, entries, rebuys, avg: alive ? Math.round(chips / alive) : 0, pool, payouts };
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

/**
 * Whether player `p` may rebuy at server time `now`: busted, and the clock at or before the
 * tournament's `rebuy_until_level` (the schema's trigger checks the same).
 */
export function canRebuy(s, p, now) {
  if (!p || p.status !== "busted") return false;
  const c = clockAt(s.clock, s.levels, now);
  return !!c && c.level.level <= ((s.tournament && s.tournament.rebuy_until_level) || 0);
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
  for (const { action, args: a } of audit) {
    switch (action) {
      case "create":
        st.tournament = { slug: a.slug, name: a.name, buy_in: a.buy_in, rebuy_until_level: a.rebuy_until_level ?? 0, starting_stack: a.starting_stack, seats_per_table: a.seats_per_table, payouts: a.payouts };
        st.levels = a.levels.map((l) => ({ ...l }));
        st.clock = { level: a.levels[0].level, running: 0, started_at_ms: null, remaining_ms: a.levels[0].duration_ms };
        break;
      case "clock":
        st.clock = { level: a.level, running: a.running, started_at_ms: a.started_at_ms, remaining_ms: a.remaining_ms };
        break;
      case "add_player":
        st.players.push({ id: a.id, name: a.name, status: "registered", table_no: null, seat: null, place: null, busted_at_ms: null, rebuys: 0 });
        break;
      case "bust":
        Object.assign(player(a.player), { status: "busted", table_no: null, seat: null, place: a.place, busted_at_ms: a.at_ms });
        break;
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
        // The players busted after this one move up a place (the schema's trigger does the same).
        const p = player(a.player);
        for (const q of st.players) if (q.status === "busted" && q.place < p.place) q.place += 1;
        Object.assign(p, { status: a.table === null ? "registered" : "seated", table_no: a.table, seat: a.seat, place: null, busted_at_ms: null, rebuys: a.rebuys });
        break;
      }
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
