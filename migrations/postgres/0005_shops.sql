-- KassaForte: shop state (current and its history), document snapshots, and two things on
-- actions: the `unknown` state (a submission that may have reached an upstream that cannot be
-- asked) and `sending_since` (set while such a request is written).
ALTER TABLE actions DROP CONSTRAINT actions_state_check;
ALTER TABLE actions ADD CONSTRAINT actions_state_check
    CHECK (state IN ('pending', 'in_flight', 'sent', 'unknown', 'succeeded', 'failed', 'dead'));
ALTER TABLE actions ADD COLUMN sending_since TIMESTAMPTZ;
CREATE INDEX actions_unknown ON actions (provider, account, id) WHERE state = 'unknown';

-- Each shop's state as last polled; a row in shop_state_history whenever the state changed.
CREATE TABLE shop_states (
    provider                   TEXT        NOT NULL,
    account                    TEXT        NOT NULL,
    hours_open                 BOOLEAN     NOT NULL,
    delivery_open              BOOLEAN,
    pickup_open                BOOLEAN,
    connection_ok              BOOLEAN,
    delivery_wait_minutes      BIGINT,
    pickup_wait_minutes        BIGINT,
    unavailable_products       TEXT        NOT NULL DEFAULT '[]',
    last_menu_refresh          TEXT,
    last_open_times_refresh    TEXT,
    last_delivery_cost_refresh TEXT,
    body                       TEXT        NOT NULL,
    observed_at                TIMESTAMPTZ NOT NULL,
    changed_at                 TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, account)
);

CREATE TABLE shop_state_history (
    id                    BIGSERIAL   PRIMARY KEY,
    provider              TEXT        NOT NULL,
    account               TEXT        NOT NULL,
    hours_open            BOOLEAN     NOT NULL,
    delivery_open         BOOLEAN,
    pickup_open           BOOLEAN,
    connection_ok         BOOLEAN,
    delivery_wait_minutes BIGINT,
    pickup_wait_minutes   BIGINT,
    unavailable_products  TEXT        NOT NULL DEFAULT '[]',
    observed_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX shop_state_history_by_shop ON shop_state_history (provider, account, observed_at);

-- Every fetch of a shop document (menu, openhours, deliverycosts), kept; the latest is in use.
CREATE TABLE shop_documents (
    id            BIGSERIAL   PRIMARY KEY,
    provider      TEXT        NOT NULL,
    account       TEXT        NOT NULL,
    document      TEXT        NOT NULL CHECK (document IN ('menu', 'openhours', 'deliverycosts')),
    refresh_value TEXT,
    body          TEXT        NOT NULL,
    body_sha256   TEXT        NOT NULL,
    fetched_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX shop_documents_latest ON shop_documents (provider, account, document, id);
