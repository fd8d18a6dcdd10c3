// A Felt tournament's document schema, applied with POST /migrations. One document per
// tournament (`felt-{slug}`). Only the TD (the document's owner) writes; screens hold
// query.read only. Every TD action is one query/batch: its state changes plus one `audit` row,
// in one transaction, so the audit is on disk (the document runs with synchronous=FULL) before
// the TD's screen shows the action done. The clock is stored, never ticked: `started_at_ms`
// (server time of the last start) and `remaining_ms` (time left in `level` at that moment);
// everyone derives the time left from the server clock, so a restart neither loses nor gains
// time.

/** Server time in ms, in SQL (the same clock for every screen). */
export const NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

const V1 = `
CREATE TABLE tournament (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  slug TEXT NOT NULL,
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
  owner TEXT NOT NULL DEFAULT (patchwork_caller()),
  buy_in INTEGER NOT NULL DEFAULT 0 CHECK (buy_in >= 0),
  starting_stack INTEGER NOT NULL CHECK (starting_stack > 0),
  seats_per_table INTEGER NOT NULL CHECK (seats_per_table BETWEEN 2 AND 10),
  payouts TEXT NOT NULL DEFAULT '[50,30,20]' CHECK (json_valid(payouts)),
  created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE levels (
  level INTEGER PRIMARY KEY CHECK (level >= 1),
  small_blind INTEGER NOT NULL DEFAULT 0,
  big_blind INTEGER NOT NULL DEFAULT 0,
  ante INTEGER NOT NULL DEFAULT 0,
  duration_ms INTEGER NOT NULL CHECK (duration_ms > 0),
  is_break INTEGER NOT NULL DEFAULT 0 CHECK (is_break IN (0, 1))
);
CREATE TABLE clock (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  level INTEGER NOT NULL REFERENCES levels(level),
  running INTEGER NOT NULL DEFAULT 0 CHECK (running IN (0, 1)),
  started_at_ms INTEGER,
  remaining_ms INTEGER NOT NULL CHECK (remaining_ms >= 0),
  CHECK (running = 0 OR started_at_ms IS NOT NULL)
);
CREATE TABLE tables (
  table_no INTEGER PRIMARY KEY CHECK (table_no >= 1),
  seats INTEGER NOT NULL CHECK (seats BETWEEN 2 AND 10),
  open INTEGER NOT NULL DEFAULT 1 CHECK (open IN (0, 1))
);
CREATE TABLE players (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 60),
  status TEXT NOT NULL DEFAULT 'registered' CHECK (status IN ('registered', 'seated', 'busted')),
  table_no INTEGER REFERENCES tables(table_no),
  seat INTEGER,
  place INTEGER,
  busted_at_ms INTEGER,
  registered_at_ms INTEGER NOT NULL,
  UNIQUE (table_no, seat),
  CHECK ((status = 'seated') = (table_no IS NOT NULL AND seat IS NOT NULL)),
  CHECK ((status = 'busted') = (place IS NOT NULL))
);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms INTEGER NOT NULL,
  actor TEXT DEFAULT (patchwork_caller()),
  action TEXT NOT NULL,
  args TEXT NOT NULL CHECK (json_valid(args))
);
CREATE TRIGGER audit_append_only_u BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit is append-only'); END;
CREATE TRIGGER audit_append_only_d BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit is append-only'); END;
CREATE TRIGGER audit_actor BEFORE INSERT ON audit
WHEN NEW.actor IS NOT patchwork_caller()
BEGIN SELECT RAISE(ABORT, 'the audit actor is the caller'); END;
`;

// Rebuys (issue 19). A busted player buys back in while the clock is at or before
// `rebuy_until_level` (0: no rebuys): `rebuys` counts them, the prize pool grows by the buy-in
// each (computed from the counts), the player returns to play. The triggers make the rules the
// schema's: only a busted player, only +1, only within the period (the level the clock is at
// now, rolled on from the stored clock exactly as felt.js clockAt), and a busted player returns
// to play only by a rebuy; the players busted after them move up one place. (Triggers, not
// column CHECKs: Patchwork refuses `ALTER TABLE … ADD COLUMN … CHECK`, whose verification runs
// SQLite's internal `PRAGMA quick_check`.)
const V2 = `
ALTER TABLE tournament ADD COLUMN rebuy_until_level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE players ADD COLUMN rebuys INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER tournament_rebuy_period_i BEFORE INSERT ON tournament
WHEN typeof(NEW.rebuy_until_level) != 'integer' OR NEW.rebuy_until_level < 0
BEGIN SELECT RAISE(ABORT, 'rebuy_until_level is a level number, 0 for no rebuys'); END;
CREATE TRIGGER tournament_rebuy_period_u BEFORE UPDATE OF rebuy_until_level ON tournament
WHEN typeof(NEW.rebuy_until_level) != 'integer' OR NEW.rebuy_until_level < 0
BEGIN SELECT RAISE(ABORT, 'rebuy_until_level is a level number, 0 for no rebuys'); END;
CREATE TRIGGER players_rebuys_start BEFORE INSERT ON players
WHEN NEW.rebuys IS NOT 0
BEGIN SELECT RAISE(ABORT, 'a player starts with no rebuys'); END;
CREATE TRIGGER players_rebuy BEFORE UPDATE OF rebuys ON players
BEGIN
  SELECT RAISE(ABORT, 'a rebuy adds exactly one') WHERE NEW.rebuys IS NOT OLD.rebuys + 1;
  SELECT RAISE(ABORT, 'only a busted player can rebuy') WHERE OLD.status != 'busted' OR NEW.status = 'busted';
  SELECT RAISE(ABORT, 'the rebuy period is over')
  WHERE (SELECT coalesce(min(l.level), (SELECT max(level) FROM levels)) FROM levels l, clock c
         WHERE l.level >= c.level
           AND c.remaining_ms - CASE WHEN c.running = 1 THEN ${NOW_MS} - c.started_at_ms ELSE 0 END
             + (SELECT coalesce(sum(m.duration_ms), 0) FROM levels m WHERE m.level > c.level AND m.level <= l.level) > 0)
        > (SELECT rebuy_until_level FROM tournament);
END;
CREATE TRIGGER players_unbust BEFORE UPDATE OF status ON players
WHEN OLD.status = 'busted' AND NEW.status != 'busted' AND NEW.rebuys IS NOT OLD.rebuys + 1
BEGIN SELECT RAISE(ABORT, 'a busted player returns to play only by a rebuy'); END;
CREATE TRIGGER players_rebuy_places AFTER UPDATE OF rebuys ON players
BEGIN UPDATE players SET place = place + 1 WHERE status = 'busted' AND place < OLD.place; END;
`;

/**
 * The level the clock is at now, in SQL: the stored clock rolled on through the levels exactly
 * as felt.js `clockAt` does (the last level once the structure has run out; NULL with no clock).
 */
const LEVEL_NOW = `(SELECT coalesce(min(l.level), (SELECT max(level) FROM levels)) FROM levels l, clock c
  WHERE l.level >= c.level
    AND c.remaining_ms - CASE WHEN c.running = 1 THEN ${NOW_MS} - c.started_at_ms ELSE 0 END
      + (SELECT coalesce(sum(m.duration_ms), 0) FROM levels m WHERE m.level > c.level AND m.level <= l.level) > 0)`;

// The tournament's settings, checked on insert and on every update (the TD edits them).
const SETTINGS_CHECKS = `
  SELECT RAISE(ABORT, 'late_reg_until_level is a level number, or null for no limit')
  WHERE NEW.late_reg_until_level IS NOT NULL
    AND (typeof(NEW.late_reg_until_level) != 'integer' OR NEW.late_reg_until_level < 1);
  SELECT RAISE(ABORT, 'rebuy_until_level is a level number, 0 for no rebuys')
  WHERE typeof(NEW.rebuy_until_level) != 'integer' OR NEW.rebuy_until_level < 0;
  SELECT RAISE(ABORT, 'add-on chips, cost and level are whole numbers, 0 or more')
  WHERE typeof(NEW.addon_chips) != 'integer' OR NEW.addon_chips < 0
     OR typeof(NEW.addon_cost) != 'integer' OR NEW.addon_cost < 0
     OR typeof(NEW.addon_until_level) != 'integer' OR NEW.addon_until_level < 0;
  SELECT RAISE(ABORT, 'payouts are positive percentages that sum to 100')
  WHERE json_type(NEW.payouts) IS NOT 'array' OR json_array_length(NEW.payouts) = 0
     OR EXISTS (SELECT 1 FROM json_each(NEW.payouts) WHERE type NOT IN ('integer', 'real') OR value <= 0)
     OR abs((SELECT total(value) FROM json_each(NEW.payouts)) - 100) > 0.0001;`;

// A level's blinds (whole chips, big at least small) and its place: only levels not yet played
// (after the level the clock is at now) are added, edited, renumbered or removed.
const LEVEL_CHECKS = `
  SELECT RAISE(ABORT, 'blinds and ante are whole chips, the big blind at least the small')
  WHERE typeof(NEW.small_blind) != 'integer' OR typeof(NEW.big_blind) != 'integer' OR typeof(NEW.ante) != 'integer'
     OR NEW.small_blind < 0 OR NEW.ante < 0 OR NEW.big_blind < NEW.small_blind
     OR typeof(NEW.duration_ms) != 'integer';
  SELECT RAISE(ABORT, 'only levels not yet played can change')
  WHERE EXISTS (SELECT 1 FROM clock) AND NEW.level <= ${LEVEL_NOW};`;

// Add-ons, rebuys for players still in, late registration, structure and payout editing, chip
// counts, undone busts (issue 19). Every rule is a trigger (Patchwork refuses `ALTER TABLE … ADD
// COLUMN … CHECK`); the level "now" is LEVEL_NOW, the stored clock rolled on in SQL.
// - settings: late registration through a level (NULL: no limit), add-on chips/cost and the last
//   level for add-ons (0: none), payouts as percentages summing to 100.
// - late registration: a player is added only while the clock is at or before
//   `late_reg_until_level`.
// - rebuys: a busted player (back in play with a starting stack), or a player still in whose
//   recorded stack is at or below the starting stack (the stack grows by it); within the period.
// - add-ons: one per player still in, while the clock is at a break or at/after the last rebuy
//   level, and at or before `addon_until_level`; a counted stack grows by the add-on chips.
// - chip counts: `chips` is the TD's last count of a player still in (NULL: not counted).
// - undone bust: `undos` + 1 returns a busted player to play (their seat kept in
//   `busted_table`/`busted_seat`); the players busted after them move up a place.
// - levels: only levels after the one the clock is at now are inserted, changed or deleted.
const V3 = `
ALTER TABLE tournament ADD COLUMN late_reg_until_level INTEGER;
ALTER TABLE tournament ADD COLUMN addon_chips INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tournament ADD COLUMN addon_cost INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tournament ADD COLUMN addon_until_level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE players ADD COLUMN addons INTEGER NOT NULL DEFAULT 0;
ALTER TABLE players ADD COLUMN chips INTEGER;
ALTER TABLE players ADD COLUMN undos INTEGER NOT NULL DEFAULT 0;
ALTER TABLE players ADD COLUMN busted_table INTEGER;
ALTER TABLE players ADD COLUMN busted_seat INTEGER;
CREATE TRIGGER tournament_settings_i BEFORE INSERT ON tournament BEGIN ${SETTINGS_CHECKS} END;
CREATE TRIGGER tournament_settings_u BEFORE UPDATE ON tournament BEGIN ${SETTINGS_CHECKS} END;
CREATE TRIGGER levels_i BEFORE INSERT ON levels BEGIN ${LEVEL_CHECKS} END;
CREATE TRIGGER levels_u BEFORE UPDATE ON levels BEGIN ${LEVEL_CHECKS}
  SELECT RAISE(ABORT, 'only levels not yet played can change') WHERE OLD.level <= ${LEVEL_NOW};
END;
CREATE TRIGGER levels_d BEFORE DELETE ON levels
WHEN EXISTS (SELECT 1 FROM clock) AND OLD.level <= ${LEVEL_NOW}
BEGIN SELECT RAISE(ABORT, 'only levels not yet played can change'); END;
CREATE TRIGGER players_v3_start BEFORE INSERT ON players
WHEN NEW.addons IS NOT 0 OR NEW.undos IS NOT 0 OR NEW.chips IS NOT NULL OR NEW.busted_table IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a player starts with no add-ons, undos or chip count'); END;
CREATE TRIGGER players_late_reg BEFORE INSERT ON players
WHEN EXISTS (SELECT 1 FROM clock) AND (SELECT late_reg_until_level FROM tournament) IS NOT NULL
  AND ${LEVEL_NOW} > (SELECT late_reg_until_level FROM tournament)
BEGIN SELECT RAISE(ABORT, 'late registration is closed'); END;
CREATE TRIGGER players_chips BEFORE UPDATE OF chips ON players
WHEN NEW.chips IS NOT NULL AND (typeof(NEW.chips) != 'integer' OR NEW.chips < 0 OR NEW.status = 'busted')
BEGIN SELECT RAISE(ABORT, 'a chip count is a whole number of chips, for a player still in'); END;
DROP TRIGGER players_rebuy;
CREATE TRIGGER players_rebuy BEFORE UPDATE OF rebuys ON players
BEGIN
  SELECT RAISE(ABORT, 'a rebuy adds exactly one') WHERE NEW.rebuys IS NOT OLD.rebuys + 1;
  SELECT RAISE(ABORT, 'a rebuy leaves the player in play') WHERE NEW.status = 'busted';
  SELECT RAISE(ABORT, 'a player still in rebuys only at or below the starting stack (count it first)')
  WHERE OLD.status != 'busted' AND (OLD.chips IS NULL OR OLD.chips > (SELECT starting_stack FROM tournament));
  SELECT RAISE(ABORT, 'a rebuy adds a starting stack')
  WHERE NEW.chips IS NOT (CASE WHEN OLD.status = 'busted' THEN 0 ELSE OLD.chips END) + (SELECT starting_stack FROM tournament);
  SELECT RAISE(ABORT, 'the rebuy period is over') WHERE ${LEVEL_NOW} > (SELECT rebuy_until_level FROM tournament);
END;
DROP TRIGGER players_unbust;
CREATE TRIGGER players_unbust BEFORE UPDATE OF status ON players
WHEN OLD.status = 'busted' AND NEW.status != 'busted'
  AND NEW.rebuys IS NOT OLD.rebuys + 1 AND NEW.undos IS NOT OLD.undos + 1
BEGIN SELECT RAISE(ABORT, 'a busted player returns to play only by a rebuy or an undone bust'); END;
CREATE TRIGGER players_undo BEFORE UPDATE OF undos ON players
BEGIN
  SELECT RAISE(ABORT, 'an undo adds exactly one') WHERE NEW.undos IS NOT OLD.undos + 1;
  SELECT RAISE(ABORT, 'only a bust is undone, back into play')
  WHERE OLD.status != 'busted' OR NEW.status = 'busted' OR NEW.rebuys IS NOT OLD.rebuys;
END;
CREATE TRIGGER players_undo_places AFTER UPDATE OF undos ON players
BEGIN UPDATE players SET place = place + 1 WHERE status = 'busted' AND place < OLD.place; END;
CREATE TRIGGER players_addon BEFORE UPDATE OF addons ON players
BEGIN
  SELECT RAISE(ABORT, 'one add-on per player') WHERE OLD.addons != 0 OR NEW.addons IS NOT 1;
  SELECT RAISE(ABORT, 'only a player still in takes an add-on') WHERE OLD.status = 'busted' OR NEW.status = 'busted';
  SELECT RAISE(ABORT, 'this tournament has no add-ons') WHERE (SELECT addon_chips FROM tournament) = 0;
  SELECT RAISE(ABORT, 'add-ons are taken at a break or from the last rebuy level, through the add-on level')
  WHERE ${LEVEL_NOW} > (SELECT addon_until_level FROM tournament)
     OR (${LEVEL_NOW} < (SELECT rebuy_until_level FROM tournament)
         AND (SELECT is_break FROM levels WHERE level = ${LEVEL_NOW}) != 1);
  SELECT RAISE(ABORT, 'an add-on adds the add-on chips to a counted stack')
  WHERE NEW.chips IS NOT OLD.chips + (SELECT addon_chips FROM tournament);
END;
`;

// Append-only: an applied version is never edited (Patchwork keeps each one's SHA-256).
export const MIGRATIONS = [
  { version: 1, name: "felt tournament", sql: V1 },
  { version: 2, name: "felt rebuys", sql: V2 },
  { version: 3, name: "felt add-ons, late registration, structure editing, chip counts, undo bust", sql: V3 },
];

/** The structure as a JSON array (the state's `levels`, and the `structure` audit's). */
export const LEVELS_JSON = `(SELECT json_group_array(json_object('level', level, 'sb', small_blind,
      'bb', big_blind, 'ante', ante, 'duration_ms', duration_ms, 'is_break', is_break))
      FROM (SELECT * FROM levels ORDER BY level))`;

/** The whole tournament as one JSON value: what every screen watches (one SQL watch). */
export const STATE_SQL = `SELECT json_object(
  'now_ms', ${NOW_MS},
  'tournament', (SELECT json_object('slug', slug, 'name', name, 'buy_in', buy_in,
      'rebuy_until_level', rebuy_until_level, 'starting_stack', starting_stack, 'seats_per_table', seats_per_table,
      'payouts', json(payouts), 'late_reg_until_level', late_reg_until_level, 'addon_chips', addon_chips,
      'addon_cost', addon_cost, 'addon_until_level', addon_until_level) FROM tournament),
  'levels', ${LEVELS_JSON},
  'clock', (SELECT json_object('level', level, 'running', running,
      'started_at_ms', started_at_ms, 'remaining_ms', remaining_ms) FROM clock),
  'tables', (SELECT json_group_array(json_object('table_no', table_no, 'seats', seats, 'open', open))
      FROM (SELECT * FROM tables ORDER BY table_no)),
  'players', (SELECT json_group_array(json_object('id', id, 'name', name, 'status', status,
      'table_no', table_no, 'seat', seat, 'place', place, 'busted_at_ms', busted_at_ms,
      'rebuys', rebuys, 'addons', addons, 'chips', chips, 'undos', undos,
      'busted_table', busted_table, 'busted_seat', busted_seat))
      FROM (SELECT * FROM players ORDER BY id)),
  'audit_seq', (SELECT max(seq) FROM audit),
  'recent', (SELECT json_group_array(json_object('seq', seq, 'at_ms', at_ms, 'action', action,
      'args', json(args))) FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT 8))
) AS state`;

/** Screens: read-only, this tournament only. */
export const SCREEN_SCOPES = ["query.read"];
