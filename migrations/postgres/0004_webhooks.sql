-- The shared webhook inbox, and the `sent` action state (a command the upstream took, whose
-- outcome is still to come).
ALTER TABLE actions DROP CONSTRAINT actions_state_check;
ALTER TABLE actions ADD CONSTRAINT actions_state_check
    CHECK (state IN ('pending', 'in_flight', 'sent', 'succeeded', 'failed', 'dead'));
-- The confirmation sweep reads the sent commands of one account.
CREATE INDEX actions_sent ON actions (provider, account, id) WHERE state = 'sent';

-- Every delivery a provider pushed (or its feed returned), stored before it is acknowledged and
-- processed afterwards: pending → processed | ignored | failed (with the reason).
CREATE TABLE webhook_deliveries (
    id           BIGSERIAL   PRIMARY KEY,
    provider     TEXT        NOT NULL,
    account      TEXT        NOT NULL,
    source       TEXT        NOT NULL DEFAULT 'webhook' CHECK (source IN ('webhook', 'feed')),
    event_id     TEXT,
    event_type   TEXT,
    object_id    TEXT,
    body         TEXT        NOT NULL,
    body_sha256  TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    state        TEXT        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'processed', 'ignored', 'failed')),
    error        TEXT,
    processed_at TIMESTAMPTZ
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
