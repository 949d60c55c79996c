-- The outbox: actions to perform upstream, claimed by the daemon, with their outcome.
-- A minimal row from SQL needs provider, account, kind and (for accept/cancel) channel and
-- external_id; every other column has a default. See docs/actions.md.
CREATE TABLE actions (
    id              BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    provider        TEXT        NOT NULL,
    account         TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    channel         TEXT,
    external_id     TEXT,
    request         JSON        NOT NULL DEFAULT '{}',
    state           TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'succeeded', 'failed', 'dead')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    max_attempts    INTEGER     NOT NULL DEFAULT 8,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by      TEXT,
    claimed_until   TIMESTAMPTZ,
    last_error      TEXT,
    result          JSON,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);

-- Claims read only open actions, in due order: finished ones (most of the table, in time) are
-- not in this index at all.
CREATE INDEX actions_due ON actions (provider, account, next_attempt_at, id)
    WHERE state IN ('pending', 'in_flight');

-- Each account's rate gate as the daemon last saw it, for `ordersync status`: a 429 pauses every
-- request of the account until paused_until.
CREATE TABLE account_gates (
    provider     TEXT        NOT NULL,
    account      TEXT        NOT NULL,
    paused_until TIMESTAMPTZ,
    rate_limited BIGINT      NOT NULL DEFAULT 0,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, account)
);
