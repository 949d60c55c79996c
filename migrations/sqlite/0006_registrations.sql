-- Webhooks ordersync registered upstream itself (Lagerkoll): a delivery must name one of them,
-- and reconciliation deletes only these, never a webhook someone else made.
CREATE TABLE webhook_registrations (
    provider        TEXT    NOT NULL,
    account         TEXT    NOT NULL,
    -- The upstream's id of the webhook (what a delete names).
    registration_id TEXT    NOT NULL,
    -- What deliveries carry to name it.
    guid            TEXT    NOT NULL,
    feature_id      TEXT    NOT NULL,
    feature_method  TEXT    NOT NULL,
    group_wide      INTEGER NOT NULL DEFAULT 0 CHECK (group_wide IN (0, 1)),
    url             TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    PRIMARY KEY (provider, account, registration_id)
);
CREATE INDEX webhook_registrations_guid ON webhook_registrations (provider, account, guid);

-- `ordersync inbox list|replay` select by state and time.
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (state, received_at);
