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

export const MIGRATIONS = [
  { version: 1, name: "felt tournament", sql: V1 },
];

/** The whole tournament as one JSON value: what every screen watches (one SQL watch). */
export const STATE_SQL = `SELECT json_object(
  'now_ms', ${NOW_MS},
  'tournament', (SELECT json_object('slug', slug, 'name', name, 'buy_in', buy_in,
      'starting_stack', starting_stack, 'seats_per_table', seats_per_table,
      'payouts', json(payouts)) FROM tournament),
  'levels', (SELECT json_group_array(json_object('level', level, 'sb', small_blind,
      'bb', big_blind, 'ante', ante, 'duration_ms', duration_ms, 'is_break', is_break))
      FROM (SELECT * FROM levels ORDER BY level)),
  'clock', (SELECT json_object('level', level, 'running', running,
      'started_at_ms', started_at_ms, 'remaining_ms', remaining_ms) FROM clock),
  'tables', (SELECT json_group_array(json_object('table_no', table_no, 'seats', seats, 'open', open))
      FROM (SELECT * FROM tables ORDER BY table_no)),
  'players', (SELECT json_group_array(json_object('id', id, 'name', name, 'status', status,
      'table_no', table_no, 'seat', seat, 'place', place, 'busted_at_ms', busted_at_ms))
      FROM (SELECT * FROM players ORDER BY id)),
  'audit_seq', (SELECT max(seq) FROM audit),
  'recent', (SELECT json_group_array(json_object('seq', seq, 'at_ms', at_ms, 'action', action,
      'args', json(args))) FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT 8))
) AS state`;

/** Screens: read-only, this tournament only. */
export const SCREEN_SCOPES = ["query.read"];
