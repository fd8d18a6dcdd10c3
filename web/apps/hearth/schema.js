// A Hearth room's document schema, applied with POST /migrations. Every rule that matters for
// trust lives here, in triggers, because guests hold query.write on the document: the server
// stamps authors (patchwork_caller()) and expiry (from the room's TTL), and refuses what a
// client must not do, whatever SQL it sends.

const V1 = `
CREATE TABLE room (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  slug TEXT NOT NULL,
  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
  description TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 280),
  owner TEXT NOT NULL,
  ttl_secs INTEGER NOT NULL DEFAULT 3600 CHECK (ttl_secs BETWEEN 5 AND 604800),
  max_participants INTEGER NOT NULL DEFAULT 20 CHECK (max_participants BETWEEN 1 AND 20),
  allow_video INTEGER NOT NULL DEFAULT 0 CHECK (allow_video IN (0, 1)),
  created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TRIGGER room_owner_is_caller BEFORE INSERT ON room
WHEN NEW.owner IS NOT patchwork_caller()
BEGIN SELECT RAISE(ABORT, 'the owner is whoever creates the room'); END;
CREATE TRIGGER room_owner_edits BEFORE UPDATE ON room
WHEN patchwork_caller() IS NOT OLD.owner OR NEW.owner IS NOT OLD.owner OR NEW.slug IS NOT OLD.slug
BEGIN SELECT RAISE(ABORT, 'only the owner changes room settings (not owner or slug)'); END;
CREATE TRIGGER room_stays BEFORE DELETE ON room
BEGIN SELECT RAISE(ABORT, 'a room is not deleted row by row'); END;
-- What Patchwork's media token route reads to allow the camera.
CREATE VIEW media_rooms AS SELECT slug AS room, allow_video FROM room;

CREATE TABLE members (
  subject TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('owner', 'member', 'guest')),
  vouched_by TEXT,
  joined_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TRIGGER members_join BEFORE INSERT ON members
WHEN patchwork_caller() IS NOT (SELECT owner FROM room)
 AND (NEW.subject IS NOT patchwork_caller() OR NEW.name IS NOT patchwork_caller_name()
      OR NEW.role IS NOT 'guest' OR NEW.vouched_by IS NOT (SELECT owner FROM room))
BEGIN SELECT RAISE(ABORT, 'you join as yourself, a guest vouched for by the owner'); END;
CREATE TRIGGER members_owner_row BEFORE INSERT ON members
WHEN NEW.role = 'owner' AND NEW.subject IS NOT (SELECT owner FROM room)
BEGIN SELECT RAISE(ABORT, 'only the room owner is owner'); END;
CREATE TRIGGER members_full BEFORE INSERT ON members
WHEN (SELECT count(*) FROM members) >= (SELECT max_participants FROM room)
BEGIN SELECT RAISE(ABORT, 'the room is full'); END;
CREATE TRIGGER members_edit BEFORE UPDATE ON members
WHEN patchwork_caller() IS NOT (SELECT owner FROM room)
BEGIN SELECT RAISE(ABORT, 'only the owner changes members'); END;
CREATE TRIGGER members_leave BEFORE DELETE ON members
WHEN patchwork_caller() IS NOT OLD.subject AND patchwork_caller() IS NOT (SELECT owner FROM room)
BEGIN SELECT RAISE(ABORT, 'the owner kicks; anyone else only leaves'); END;

CREATE TABLE messages (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL DEFAULT 'text' CHECK (kind IN ('text', 'system', 'emote')),
  body TEXT NOT NULL CHECK (length(body) BETWEEN 1 AND 2000),
  author TEXT,
  author_name TEXT,
  created_at INTEGER,
  edited_at INTEGER,
  expires_at INTEGER
);
CREATE TRIGGER messages_no_forgery BEFORE INSERT ON messages
WHEN NEW.author IS NOT NULL OR NEW.author_name IS NOT NULL OR NEW.created_at IS NOT NULL
  OR NEW.edited_at IS NOT NULL OR NEW.expires_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'author, times and expires_at are set by the server'); END;
CREATE TRIGGER messages_members_only BEFORE INSERT ON messages
WHEN NOT EXISTS (SELECT 1 FROM members WHERE subject = patchwork_caller())
BEGIN SELECT RAISE(ABORT, 'join the room before you speak'); END;
CREATE TRIGGER messages_stamp AFTER INSERT ON messages
BEGIN
  UPDATE messages SET author = patchwork_caller(), author_name = patchwork_caller_name(),
    created_at = unixepoch(),
    expires_at = unixepoch() + (SELECT ttl_secs FROM room WHERE id = 1)
  WHERE id = NEW.id;
END;
CREATE TRIGGER messages_edit BEFORE UPDATE ON messages
WHEN OLD.author IS NOT NULL AND (
  NEW.id IS NOT OLD.id OR NEW.kind IS NOT OLD.kind OR NEW.author IS NOT OLD.author
  OR NEW.author_name IS NOT OLD.author_name OR NEW.created_at IS NOT OLD.created_at
  OR NEW.expires_at IS NOT OLD.expires_at OR OLD.author IS NOT patchwork_caller()
  OR unixepoch() > OLD.created_at + 60)
BEGIN SELECT RAISE(ABORT, 'only the author edits the text, within 60 seconds'); END;
CREATE TRIGGER messages_edited AFTER UPDATE OF body ON messages
WHEN OLD.author IS NOT NULL
BEGIN UPDATE messages SET edited_at = unixepoch() WHERE id = NEW.id; END;
CREATE TRIGGER messages_delete BEFORE DELETE ON messages
WHEN patchwork_caller() IS NOT NULL AND patchwork_caller() IS NOT OLD.author
  AND patchwork_caller() IS NOT (SELECT owner FROM room)
BEGIN SELECT RAISE(ABORT, 'only the author or the owner deletes a message'); END;
`;

export const MIGRATIONS = [{ version: 1, name: "hearth room v1", sql: V1.trim() }];

/** Row expiry: the sweep deletes messages at expires_at (and indexes the column). */
export const EXPIRY = { rules: [{ table: "messages", column: "expires_at", format: "unix_seconds" }] };

/** What a guest's invite grants: read and write the room's document, presence in its room. */
export function guestScopes(slug) {
  return [
    "query.read",
    "query.write",
    { action: "presence.read", resource_prefix: slug },
    { action: "presence.write", resource_prefix: slug },
  ];
}
