-- Orders, their status history, stream cursors and quarantined records.
-- `payload` is JSON (not JSONB) so the body is kept exactly as the provider sent it.

CREATE TABLE orders (
    id                  BIGSERIAL PRIMARY KEY,
    provider            TEXT        NOT NULL,
    account             TEXT        NOT NULL,
    channel             TEXT        NOT NULL,
    external_id         TEXT        NOT NULL,
    status              TEXT,
    payment_status      TEXT,
    shipping_status     TEXT,
    total_minor         BIGINT,
    currency            TEXT,
    upstream_created_at TIMESTAMPTZ,
    upstream_updated_at TIMESTAMPTZ NOT NULL,
    payload             JSON        NOT NULL,
    first_seen_at       TIMESTAMPTZ NOT NULL,
    synced_at           TIMESTAMPTZ NOT NULL,
    UNIQUE (provider, account, channel, external_id)
);

CREATE INDEX orders_by_updated ON orders (provider, account, upstream_updated_at);

CREATE TABLE order_events (
    id                  BIGSERIAL PRIMARY KEY,
    order_id            BIGINT      NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    provider            TEXT        NOT NULL,
    account             TEXT        NOT NULL,
    channel             TEXT        NOT NULL,
    external_id         TEXT        NOT NULL,
    old_status          TEXT,
    new_status          TEXT,
    old_payment_status  TEXT,
    new_payment_status  TEXT,
    old_shipping_status TEXT,
    new_shipping_status TEXT,
    upstream_updated_at TIMESTAMPTZ NOT NULL,
    observed_at         TIMESTAMPTZ NOT NULL
);

CREATE INDEX order_events_by_order ON order_events (order_id, id);

-- The history is written by the database itself, in the same statement as the order, so no
-- writer (ordersync or a person with SQL) can change a status without leaving a trace.
-- Statement-level triggers with transition tables write a whole batch's history in one
-- INSERT ... SELECT; an INSERT ... ON CONFLICT DO UPDATE fires both of them.
CREATE FUNCTION ordersync_orders_first_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_events (order_id, provider, account, channel, external_id,
        old_status, new_status, old_payment_status, new_payment_status,
        old_shipping_status, new_shipping_status, upstream_updated_at, observed_at)
    SELECT n.id, n.provider, n.account, n.channel, n.external_id,
        NULL, n.status, NULL, n.payment_status, NULL, n.shipping_status,
        n.upstream_updated_at, n.synced_at
    FROM inserted_orders n
    ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION ordersync_orders_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_events (order_id, provider, account, channel, external_id,
        old_status, new_status, old_payment_status, new_payment_status,
        old_shipping_status, new_shipping_status, upstream_updated_at, observed_at)
    SELECT n.id, n.provider, n.account, n.channel, n.external_id,
        o.status, n.status, o.payment_status, n.payment_status,
        o.shipping_status, n.shipping_status, n.upstream_updated_at, n.synced_at
    FROM updated_orders_new n
    JOIN updated_orders_old o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status
       OR o.payment_status IS DISTINCT FROM n.payment_status
       OR o.shipping_status IS DISTINCT FROM n.shipping_status
    ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_first_seen AFTER INSERT ON orders
    REFERENCING NEW TABLE AS inserted_orders
    FOR EACH STATEMENT EXECUTE FUNCTION ordersync_orders_first_seen();

CREATE TRIGGER orders_status_changed AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS updated_orders_old NEW TABLE AS updated_orders_new
    FOR EACH STATEMENT EXECUTE FUNCTION ordersync_orders_status_changed();

CREATE TABLE sync_cursors (
    provider             TEXT        NOT NULL,
    account              TEXT        NOT NULL,
    resource             TEXT        NOT NULL,
    cursor               TEXT,
    cursor_updated_at    TIMESTAMPTZ,
    last_run_started_at  TIMESTAMPTZ,
    last_run_finished_at TIMESTAMPTZ,
    last_success_at      TIMESTAMPTZ,
    last_error           TEXT,
    consecutive_failures INTEGER     NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, account, resource)
);

CREATE TABLE quarantine (
    id            BIGSERIAL PRIMARY KEY,
    provider      TEXT        NOT NULL,
    account       TEXT        NOT NULL,
    source        TEXT        NOT NULL,
    error         TEXT        NOT NULL,
    raw_body      TEXT        NOT NULL,
    body_sha256   TEXT        NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL,
    times_seen    INTEGER     NOT NULL DEFAULT 1,
    UNIQUE (provider, account, body_sha256)
);
