-- RFC 8599 push parameters on bindings, and MESSAGEs deferred for offline devices (SQLite).

ALTER TABLE bindings ADD COLUMN pn_provider TEXT;
ALTER TABLE bindings ADD COLUMN pn_prid TEXT;
ALTER TABLE bindings ADD COLUMN pn_param TEXT;

-- The RFC 8599 parameters a device last registered with, kept on the device so that
-- it can still be pushed after its binding expired (it is offline then).
ALTER TABLE devices ADD COLUMN pn_provider TEXT;
ALTER TABLE devices ADD COLUMN pn_prid TEXT;
ALTER TABLE devices ADD COLUMN pn_param TEXT;

-- One row per recipient device. `delivered_at` is set only when the device
-- confirmed delivery (2xx), so a crash between sending and the answer keeps it.
-- `claimed_until` is a delivery lease: one deliverer (of possibly several nodes) at a
-- time sends a device its messages, in order; a crashed deliverer's lease runs out.
CREATE TABLE deferred_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    instance_id  TEXT    NOT NULL,
    sender       TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    date_header  TEXT,
    received_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    claimed_until INTEGER,
    delivered_at INTEGER
);
CREATE INDEX deferred_messages_pending ON deferred_messages (account_id, instance_id, id)
    WHERE delivered_at IS NULL;
CREATE INDEX deferred_messages_expires ON deferred_messages (expires_at);
