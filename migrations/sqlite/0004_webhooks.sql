-- no-transaction
-- The shared webhook inbox, and the `sent` action state (a command the upstream took, whose
-- outcome is still to come). SQLite cannot change a CHECK constraint in place, so `actions` is
-- rebuilt; foreign keys are off for the copy (asns refer to actions by id, which stay) and the
-- rebuild is one transaction.
PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE actions_rebuilt (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    provider        TEXT    NOT NULL,
    account         TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    channel         TEXT,
    external_id     TEXT,
    request         TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(request)),
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'sent', 'succeeded', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 8,
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    claimed_by      TEXT,
    claimed_until   TEXT,
    last_error      TEXT,
    result          TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at     TEXT
);
INSERT INTO actions_rebuilt SELECT * FROM actions;
DROP TABLE actions;
ALTER TABLE actions_rebuilt RENAME TO actions;
CREATE INDEX actions_due ON actions (provider, account, next_attempt_at, id)
    WHERE state IN ('pending', 'in_flight');
-- The confirmation sweep reads the sent commands of one account.
CREATE INDEX actions_sent ON actions (provider, account, id) WHERE state = 'sent';

-- Every delivery a provider pushed (or its feed returned), stored before it is acknowledged and
-- processed afterwards: pending → processed | ignored | failed (with the reason).
CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY,
    provider     TEXT    NOT NULL,
    account      TEXT    NOT NULL,
    source       TEXT    NOT NULL DEFAULT 'webhook' CHECK (source IN ('webhook', 'feed')),
    event_id     TEXT,
    event_type   TEXT,
    object_id    TEXT,
    body         TEXT    NOT NULL,
    body_sha256  TEXT    NOT NULL,
    received_at  TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'processed', 'ignored', 'failed')),
    error        TEXT,
    processed_at TEXT
);

-- One row per upstream event id: a repeated delivery is acknowledged and not stored again.
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (provider, account, event_id)
    WHERE event_id IS NOT NULL;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (provider, account, id)
    WHERE state = 'pending';
-- One poll answers every pending event about its object.
CREATE INDEX webhook_deliveries_pending_object
    ON webhook_deliveries (provider, account, object_id, received_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (provider, account, received_at);

COMMIT;
PRAGMA foreign_keys = ON;
