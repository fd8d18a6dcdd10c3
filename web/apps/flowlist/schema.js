// A FlowList list's document schema, applied with POST /migrations. Versions are append-only:
// an applied version is never edited (the server refuses a changed one with 409), new rules
// come as new versions. The app posts every version each time a list opens, so older lists
// gain new versions and re-posting applied ones changes nothing.
//
// v1 tables, constraints and indexes; v2 the seed (a demo person and a sample list, so a fresh
// document is a usable list); v3 the triggers that stamp authors from patchwork_caller() and
// keep the data consistent. The seed comes before the triggers because its rows name the demo
// person as their author, which the triggers refuse from anyone but the server.
//
// Who may write at all is not decided here: it is the Patchwork scopes of each member
// (editors hold query.write, viewers do not). The triggers only keep authors honest.

const V1 = `
CREATE TABLE profiles (
  subject TEXT PRIMARY KEY CHECK (length(subject) BETWEEN 1 AND 256),
  name TEXT NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 80),
  updated_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE lists (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  name TEXT NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 80),
  owner TEXT NOT NULL REFERENCES profiles (subject),
  created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE list_members (
  subject TEXT PRIMARY KEY REFERENCES profiles (subject) ON DELETE CASCADE,
  list_id INTEGER NOT NULL DEFAULT 1 REFERENCES lists (id) ON DELETE CASCADE,
  role TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
  added_by TEXT,
  joined_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE UNIQUE INDEX list_members_one_owner ON list_members (list_id) WHERE role = 'owner';
CREATE TABLE tasks (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
  list_id INTEGER NOT NULL DEFAULT 1 REFERENCES lists (id) ON DELETE CASCADE,
  title TEXT NOT NULL CHECK (length(trim(title)) BETWEEN 1 AND 300),
  notes TEXT NOT NULL DEFAULT '' CHECK (length(notes) <= 5000),
  done INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
  done_at INTEGER,
  done_by TEXT,
  due_date TEXT CHECK (due_date IS NULL OR (length(due_date) = 10 AND date(due_date) IS due_date)),
  position REAL NOT NULL,
  assignee TEXT REFERENCES profiles (subject) ON DELETE SET NULL,
  created_by TEXT,
  created_at INTEGER,
  updated_by TEXT,
  updated_at INTEGER
);
CREATE INDEX tasks_by_position ON tasks (list_id, done, position);
CREATE INDEX tasks_by_due ON tasks (due_date) WHERE due_date IS NOT NULL AND done = 0;
CREATE INDEX tasks_by_assignee ON tasks (assignee) WHERE assignee IS NOT NULL;
CREATE TABLE comments (
  id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
  task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
  body TEXT NOT NULL CHECK (length(trim(body)) BETWEEN 1 AND 2000),
  author TEXT,
  author_name TEXT,
  created_at INTEGER
);
CREATE INDEX comments_by_task ON comments (task_id, created_at);
CREATE TABLE task_reactions (
  task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
  subject TEXT NOT NULL,
  emoji TEXT NOT NULL CHECK (emoji IN ('👍', '🎉', '❤️', '👀', '🔥')),
  created_at INTEGER NOT NULL DEFAULT (unixepoch()),
  PRIMARY KEY (task_id, subject, emoji)
) WITHOUT ROWID;
CREATE TABLE streaks (
  subject TEXT NOT NULL,
  day TEXT NOT NULL CHECK (length(day) = 10 AND date(day) IS day),
  completed INTEGER NOT NULL DEFAULT 1 CHECK (completed >= 0),
  PRIMARY KEY (subject, day)
) WITHOUT ROWID;
CREATE INDEX streaks_by_day ON streaks (day);
`;

const V2 = `
INSERT INTO profiles (subject, name) VALUES ('demo', 'Demo Dana');
INSERT INTO lists (id, name, owner) VALUES (1, 'Welcome to FlowList', 'demo');
INSERT INTO list_members (subject, role, added_by) VALUES ('demo', 'owner', 'demo');
INSERT INTO tasks (id, title, notes, position, due_date, assignee, created_by, created_at) VALUES
  ('seed-1', 'Tick me off to start a streak', 'Every day with at least one finished task keeps the streak alive.', 1, date('now'), 'demo', 'demo', unixepoch()),
  ('seed-2', 'Drag me by the handle to reorder (or Alt+↑ / Alt+↓)', '', 2, NULL, NULL, 'demo', unixepoch()),
  ('seed-3', 'Click a title to edit it', 'Notes, a due date and an assignee live in the details.', 3, date('now', '+3 days'), NULL, 'demo', unixepoch()),
  ('seed-4', 'Invite someone with the Share button', 'Editors change the list, viewers only follow along.', 4, NULL, 'demo', 'demo', unixepoch());
INSERT INTO comments (id, task_id, body, author, author_name, created_at) VALUES
  ('seed-c1', 'seed-3', 'Comments and reactions show up for everyone at once.', 'demo', 'Demo Dana', unixepoch());
INSERT INTO task_reactions (task_id, subject, emoji) VALUES ('seed-3', 'demo', '🎉');
`;

const V3 = `
-- Profiles: you write your own; the list's owner writes anyone's (to add members who cannot).
CREATE TRIGGER profiles_insert BEFORE INSERT ON profiles
WHEN patchwork_caller() IS NOT NULL AND NEW.subject IS NOT patchwork_caller()
  AND patchwork_caller() IS NOT (SELECT owner FROM lists WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'you write only your own profile'); END;
CREATE TRIGGER profiles_update BEFORE UPDATE ON profiles
WHEN patchwork_caller() IS NOT NULL AND (NEW.subject IS NOT OLD.subject OR (OLD.subject IS NOT patchwork_caller()
  AND patchwork_caller() IS NOT (SELECT owner FROM lists WHERE id = 1)))
BEGIN SELECT RAISE(ABORT, 'you write only your own profile'); END;

-- The list: only its owner renames it; the owner never changes, except once, when the
-- person who created the document claims the seeded sample list from the demo person.
CREATE TRIGGER lists_update BEFORE UPDATE ON lists
WHEN patchwork_caller() IS NOT NULL AND NOT (
  (OLD.owner = 'demo' AND NEW.owner IS patchwork_caller())
  OR (OLD.owner IS patchwork_caller() AND NEW.owner IS OLD.owner AND NEW.id IS OLD.id))
BEGIN SELECT RAISE(ABORT, 'only the owner changes the list'); END;
CREATE TRIGGER lists_no_insert BEFORE INSERT ON lists
WHEN patchwork_caller() IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a document holds one list'); END;
CREATE TRIGGER lists_no_delete BEFORE DELETE ON lists
WHEN patchwork_caller() IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a list is not deleted row by row'); END;

-- Members (what the app shows; Patchwork's scopes are what is enforced): you add yourself as
-- an editor, the owner adds, changes and removes anyone, and anyone may leave.
CREATE TRIGGER list_members_insert BEFORE INSERT ON list_members
WHEN patchwork_caller() IS NOT NULL AND patchwork_caller() IS NOT (SELECT owner FROM lists WHERE id = 1)
  AND (NEW.subject IS NOT patchwork_caller() OR NEW.role IS NOT 'editor')
BEGIN SELECT RAISE(ABORT, 'only the owner adds others or gives roles'); END;
CREATE TRIGGER list_members_owner_row BEFORE INSERT ON list_members
WHEN NEW.role = 'owner' AND NEW.subject IS NOT (SELECT owner FROM lists WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'only the list owner has the owner role'); END;
CREATE TRIGGER list_members_update BEFORE UPDATE ON list_members
WHEN patchwork_caller() IS NOT NULL
  AND (NEW.subject IS NOT OLD.subject OR NEW.role IS NOT OLD.role OR NEW.list_id IS NOT OLD.list_id)
  AND (patchwork_caller() IS NOT (SELECT owner FROM lists WHERE id = 1)
    OR NEW.subject IS NOT OLD.subject OR (NEW.role = 'owner') IS NOT (OLD.role = 'owner'))
BEGIN SELECT RAISE(ABORT, 'only the owner changes roles (and the owner stays owner)'); END;
CREATE TRIGGER list_members_delete BEFORE DELETE ON list_members
WHEN patchwork_caller() IS NOT NULL AND OLD.subject IS NOT patchwork_caller()
  AND patchwork_caller() IS NOT (SELECT owner FROM lists WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'the owner removes members; anyone else only leaves'); END;
CREATE TRIGGER list_members_stamp AFTER INSERT ON list_members
WHEN patchwork_caller() IS NOT NULL
BEGIN UPDATE list_members SET added_by = patchwork_caller(), joined_at = unixepoch() WHERE subject = NEW.subject; END;

-- Tasks: who made and last changed a task, and who finished it when, are the server's to say.
CREATE TRIGGER tasks_no_forgery BEFORE INSERT ON tasks
WHEN patchwork_caller() IS NOT NULL AND (NEW.created_by IS NOT NULL OR NEW.created_at IS NOT NULL
  OR NEW.updated_by IS NOT NULL OR NEW.updated_at IS NOT NULL OR NEW.done_by IS NOT NULL OR NEW.done_at IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'authors and times are set by the server'); END;
CREATE TRIGGER tasks_stamp_insert AFTER INSERT ON tasks
WHEN patchwork_caller() IS NOT NULL
BEGIN
  UPDATE tasks SET created_by = patchwork_caller(), created_at = unixepoch(),
    done_by = CASE NEW.done WHEN 1 THEN patchwork_caller() END,
    done_at = CASE NEW.done WHEN 1 THEN unixepoch() END
  WHERE id = NEW.id;
END;
CREATE TRIGGER tasks_keep_authors BEFORE UPDATE ON tasks
WHEN patchwork_caller() IS NOT NULL AND (NEW.id IS NOT OLD.id OR NEW.list_id IS NOT OLD.list_id
  OR ((NEW.created_by IS NOT OLD.created_by OR NEW.created_at IS NOT OLD.created_at)
    AND NOT (OLD.created_by IS NULL AND NEW.created_by IS patchwork_caller())))
BEGIN SELECT RAISE(ABORT, 'a task keeps its id, list and author'); END;
CREATE TRIGGER tasks_stamp_update AFTER UPDATE ON tasks
WHEN patchwork_caller() IS NOT NULL
BEGIN
  UPDATE tasks SET updated_by = patchwork_caller(), updated_at = unixepoch(),
    done_by = CASE WHEN NEW.done = OLD.done THEN OLD.done_by WHEN NEW.done = 1 THEN patchwork_caller() END,
    done_at = CASE WHEN NEW.done = OLD.done THEN OLD.done_at WHEN NEW.done = 1 THEN unixepoch() END
  WHERE id = NEW.id;
END;
-- Streaks: a day counts for whoever finished a task on it (UTC days).
CREATE TRIGGER tasks_streak_update AFTER UPDATE OF done ON tasks
WHEN NEW.done = 1 AND OLD.done = 0 AND patchwork_caller() IS NOT NULL
BEGIN
  INSERT INTO streaks (subject, day) VALUES (patchwork_caller(), date('now'))
  ON CONFLICT (subject, day) DO UPDATE SET completed = completed + 1;
END;
CREATE TRIGGER tasks_streak_insert AFTER INSERT ON tasks
WHEN NEW.done = 1 AND patchwork_caller() IS NOT NULL
BEGIN
  INSERT INTO streaks (subject, day) VALUES (patchwork_caller(), date('now'))
  ON CONFLICT (subject, day) DO UPDATE SET completed = completed + 1;
END;

-- Comments: stamped with their author; only the author edits, the author or the owner deletes.
CREATE TRIGGER comments_no_forgery BEFORE INSERT ON comments
WHEN patchwork_caller() IS NOT NULL AND (NEW.author IS NOT NULL OR NEW.author_name IS NOT NULL OR NEW.created_at IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'the author of a comment is set by the server'); END;
CREATE TRIGGER comments_stamp AFTER INSERT ON comments
WHEN patchwork_caller() IS NOT NULL
BEGIN
  UPDATE comments SET author = patchwork_caller(), author_name = patchwork_caller_name(), created_at = unixepoch()
  WHERE id = NEW.id;
END;
CREATE TRIGGER comments_edit BEFORE UPDATE ON comments
WHEN patchwork_caller() IS NOT NULL AND OLD.author IS NOT NULL AND (OLD.author IS NOT patchwork_caller()
  OR NEW.id IS NOT OLD.id OR NEW.task_id IS NOT OLD.task_id OR NEW.author IS NOT OLD.author
  OR NEW.author_name IS NOT OLD.author_name OR NEW.created_at IS NOT OLD.created_at)
BEGIN SELECT RAISE(ABORT, 'only the author edits a comment'); END;
CREATE TRIGGER comments_delete BEFORE DELETE ON comments
WHEN patchwork_caller() IS NOT NULL AND OLD.author IS NOT patchwork_caller()
  AND patchwork_caller() IS NOT (SELECT owner FROM lists WHERE id = 1)
  AND EXISTS (SELECT 1 FROM tasks WHERE id = OLD.task_id)
BEGIN SELECT RAISE(ABORT, 'only the author or the owner deletes a comment'); END;

-- Reactions: your own only.
CREATE TRIGGER task_reactions_own BEFORE INSERT ON task_reactions
WHEN patchwork_caller() IS NOT NULL AND NEW.subject IS NOT patchwork_caller()
BEGIN SELECT RAISE(ABORT, 'you react as yourself'); END;
CREATE TRIGGER task_reactions_delete BEFORE DELETE ON task_reactions
WHEN patchwork_caller() IS NOT NULL AND OLD.subject IS NOT patchwork_caller()
  AND EXISTS (SELECT 1 FROM tasks WHERE id = OLD.task_id)
BEGIN SELECT RAISE(ABORT, 'you take back only your own reactions'); END;
CREATE TRIGGER task_reactions_update BEFORE UPDATE ON task_reactions
WHEN patchwork_caller() IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'reactions are added or taken back, not changed'); END;
`;

export const MIGRATIONS = [
  { version: 1, name: "flowlist tables", sql: V1.trim() },
  { version: 2, name: "flowlist seed: a demo person and a sample list", sql: V2.trim() },
  { version: 3, name: "flowlist triggers: authors from patchwork_caller()", sql: V3.trim() },
];

/** The emoji a task may be reacted with (the `task_reactions.emoji` CHECK). */
export const EMOJI = ["👍", "🎉", "❤️", "👀", "🔥"];

/** The presence room of a list (the scopes' resource): its slug. */
export function roomOf(db) {
  return db.replace(/^flowlist-/, "");
}

const grant = (action, resource_prefix = null) => ({ action, resource_prefix });

/** Patchwork grants per role on a list's document (invites and PATCH /members). */
export function scopesFor(role, db) {
  const room = roomOf(db);
  const presence = [grant("presence.read", room), grant("presence.write", room)];
  if (role === "editor") return [grant("query.read"), grant("query.write"), ...presence];
  if (role === "viewer") return [grant("query.read"), ...presence];
  throw new Error(`unknown role ${role}`);
}

/** The role the grants amount to (what the members panel shows when the table has no row). */
export function roleOf(scopes) {
  const actions = (scopes || []).map((s) => (typeof s === "string" ? s : s.action));
  return actions.includes("query.write") ? "editor" : "viewer";
}

/**
 * The whole list as one JSON value: one query watch keeps every member's view in step (any
 * write to these tables re-evaluates it, and an update is sent only when the result changed).
 * `?1` is the viewer's subject (their own streak days).
 */
export const STATE_SQL = `SELECT json_object(
  'list', (SELECT json_object('name', name, 'owner', owner, 'created_at', created_at) FROM lists WHERE id = 1),
  'tasks', (SELECT json_group_array(json_object('id', id, 'title', title, 'notes', notes, 'done', done,
      'done_at', done_at, 'done_by', done_by, 'due_date', due_date, 'position', position,
      'assignee', assignee, 'created_by', created_by, 'updated_by', updated_by, 'updated_at', updated_at))
    FROM (SELECT * FROM tasks ORDER BY position, id)),
  'comments', (SELECT json_group_array(json_object('id', id, 'task_id', task_id, 'body', body,
      'author', author, 'author_name', author_name, 'created_at', created_at))
    FROM (SELECT * FROM comments ORDER BY created_at, id)),
  'reactions', (SELECT json_group_array(json_object('task_id', task_id, 'subject', subject, 'emoji', emoji))
    FROM (SELECT * FROM task_reactions ORDER BY created_at)),
  'members', (SELECT json_group_array(json_object('subject', m.subject, 'name', p.name, 'role', m.role, 'joined_at', m.joined_at))
    FROM (SELECT * FROM list_members ORDER BY role = 'owner' DESC, joined_at) m JOIN profiles p USING (subject)),
  'profiles', (SELECT json_group_array(json_object('subject', subject, 'name', name)) FROM profiles),
  'team_days', (SELECT json_group_array(day) FROM (SELECT DISTINCT day FROM streaks ORDER BY day DESC LIMIT 400)),
  'my_days', (SELECT json_group_array(day) FROM (SELECT day FROM streaks WHERE subject = ?1 ORDER BY day DESC LIMIT 400))
) AS state`;

/** Days in a row (UTC) ending today, or yesterday while today has none yet. */
export function streak(days, today = new Date().toISOString().slice(0, 10)) {
  const set = new Set(days || []);
  const step = (d, n) => new Date(Date.parse(`${d}T00:00:00Z`) + n * 86400000).toISOString().slice(0, 10);
  let day = set.has(today) ? today : step(today, -1);
  let n = 0;
  while (set.has(day)) { n += 1; day = step(day, -1); }
  return n;
}
