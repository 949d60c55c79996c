-- no-transaction
-- KassaForte: shop state (current and its history), document snapshots, and two things on
-- actions: the `unknown` state (a submission that may have reached an upstream that cannot be
-- asked) and `sending_since` (set while such a request is written). SQLite cannot change a
-- CHECK constraint in place, so `actions` is rebuilt as in 0004.
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
                    CHECK (state IN ('pending', 'in_flight', 'sent', 'unknown', 'succeeded',
                                     'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 8,
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    claimed_by      TEXT,
    claimed_until   TEXT,
    last_error      TEXT,
    result          TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at     TEXT,
    sending_since   TEXT
);
INSERT INTO actions_rebuilt (id, idempotency_key, provider, account, kind, channel, external_id,
    request, state, attempts, max_attempts, next_attempt_at, claimed_by, claimed_until,
    last_error, result, created_at, updated_at, finished_at)
SELECT id, idempotency_key, provider, account, kind, channel, external_id, request, state,
    attempts, max_attempts, next_attempt_at, claimed_by, claimed_until, last_error, result,
    created_at, updated_at, finished_at FROM actions;
DROP TABLE actions;
ALTER TABLE actions_rebuilt RENAME TO actions;
CREATE INDEX actions_due ON actions (provider, account, next_attempt_at, id)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX actions_sent ON actions (provider, account, id) WHERE state = 'sent';
CREATE INDEX actions_unknown ON actions (provider, account, id) WHERE state = 'unknown';

-- Each shop's state as last polled; a row in shop_state_history whenever the state changed.
CREATE TABLE shop_states (
    provider                   TEXT    NOT NULL,
    account                    TEXT    NOT NULL,
    hours_open                 INTEGER NOT NULL,
    delivery_open              INTEGER,
    pickup_open                INTEGER,
    connection_ok              INTEGER,
    delivery_wait_minutes      INTEGER,
    pickup_wait_minutes        INTEGER,
    unavailable_products       TEXT    NOT NULL DEFAULT '[]',
    last_menu_refresh          TEXT,
    last_open_times_refresh    TEXT,
    last_delivery_cost_refresh TEXT,
    body                       TEXT    NOT NULL,
    observed_at                TEXT    NOT NULL,
    changed_at                 TEXT    NOT NULL,
    PRIMARY KEY (provider, account)
);

CREATE TABLE shop_state_history (
    id                    INTEGER PRIMARY KEY,
    provider              TEXT    NOT NULL,
    account               TEXT    NOT NULL,
    hours_open            INTEGER NOT NULL,
    delivery_open         INTEGER,
    pickup_open           INTEGER,
    connection_ok         INTEGER,
    delivery_wait_minutes INTEGER,
    pickup_wait_minutes   INTEGER,
    unavailable_products  TEXT    NOT NULL DEFAULT '[]',
    observed_at           TEXT    NOT NULL
);
CREATE INDEX shop_state_history_by_shop ON shop_state_history (provider, account, observed_at);

-- Every fetch of a shop document (menu, openhours, deliverycosts), kept; the latest is in use.
CREATE TABLE shop_documents (
    id            INTEGER PRIMARY KEY,
    provider      TEXT NOT NULL,
    account       TEXT NOT NULL,
    document      TEXT NOT NULL CHECK (document IN ('menu', 'openhours', 'deliverycosts')),
    refresh_value TEXT,
    body          TEXT NOT NULL,
    body_sha256   TEXT NOT NULL,
    fetched_at    TEXT NOT NULL
);
CREATE INDEX shop_documents_latest ON shop_documents (provider, account, document, id);

COMMIT;
PRAGMA foreign_keys = ON;
