-- no-transaction
-- Orders are kept unique by (scope_id, external_id), where scope_id numbers one (provider,
-- account, channel). The same uniqueness as (provider, account, channel, external_id), in an
-- index about half the size: with order ids in no particular order of time, every commit rewrites
-- most of that index's pages, so its size sets how fast a large database takes new orders.
-- SQLite cannot drop a table's UNIQUE constraint, so `orders` is rebuilt (ids kept, so
-- `order_events` still points at the right orders).
PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE order_scopes (
    id       INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    account  TEXT NOT NULL,
    channel  TEXT NOT NULL,
    UNIQUE (provider, account, channel),
    -- What the foreign key from `orders` names, so that key covers all four columns.
    UNIQUE (id, provider, account, channel)
);

INSERT INTO order_scopes (provider, account, channel)
SELECT DISTINCT provider, account, channel FROM orders ORDER BY provider, account, channel;

CREATE TABLE orders_rebuilt (
    id                  INTEGER PRIMARY KEY,
    provider            TEXT    NOT NULL,
    account             TEXT    NOT NULL,
    channel             TEXT    NOT NULL,
    external_id         TEXT    NOT NULL,
    status              TEXT,
    payment_status      TEXT,
    shipping_status     TEXT,
    total_minor         INTEGER,
    currency            TEXT,
    upstream_created_at TEXT,
    upstream_updated_at TEXT    NOT NULL,
    payload             TEXT    NOT NULL,
    first_seen_at       TEXT    NOT NULL,
    synced_at           TEXT    NOT NULL,
    scope_id            INTEGER NOT NULL,
    -- scope_id must number the row's own (provider, account, channel), or one order could be
    -- stored twice under two numbers, or two channels' orders of the same id taken for one.
    -- Checked on every write by a connection with foreign keys on, as ordersync's are.
    FOREIGN KEY (scope_id, provider, account, channel)
        REFERENCES order_scopes (id, provider, account, channel)
);

INSERT INTO orders_rebuilt (id, provider, account, channel, external_id, status, payment_status,
    shipping_status, total_minor, currency, upstream_created_at, upstream_updated_at, payload,
    first_seen_at, synced_at, scope_id)
SELECT o.id, o.provider, o.account, o.channel, o.external_id, o.status, o.payment_status,
    o.shipping_status, o.total_minor, o.currency, o.upstream_created_at, o.upstream_updated_at,
    o.payload, o.first_seen_at, o.synced_at, s.id
FROM orders o
JOIN order_scopes s ON s.provider = o.provider AND s.account = o.account AND s.channel = o.channel
ORDER BY o.id;

-- Dropping the old table drops its indexes and triggers; both are created again below.
DROP TABLE orders;
ALTER TABLE orders_rebuilt RENAME TO orders;

CREATE UNIQUE INDEX orders_key ON orders (scope_id, external_id);
CREATE INDEX orders_by_updated ON orders (provider, account, upstream_updated_at);

-- As in 0001: the history is written by the database itself.
CREATE TRIGGER orders_first_seen AFTER INSERT ON orders
BEGIN
    INSERT INTO order_events (order_id, provider, account, channel, external_id,
        old_status, new_status, old_payment_status, new_payment_status,
        old_shipping_status, new_shipping_status, upstream_updated_at, observed_at)
    VALUES (NEW.id, NEW.provider, NEW.account, NEW.channel, NEW.external_id,
        NULL, NEW.status, NULL, NEW.payment_status, NULL, NEW.shipping_status,
        NEW.upstream_updated_at, NEW.synced_at);
END;

CREATE TRIGGER orders_status_changed AFTER UPDATE ON orders
WHEN OLD.status IS NOT NEW.status
  OR OLD.payment_status IS NOT NEW.payment_status
  OR OLD.shipping_status IS NOT NEW.shipping_status
BEGIN
    INSERT INTO order_events (order_id, provider, account, channel, external_id,
        old_status, new_status, old_payment_status, new_payment_status,
        old_shipping_status, new_shipping_status, upstream_updated_at, observed_at)
    VALUES (NEW.id, NEW.provider, NEW.account, NEW.channel, NEW.external_id,
        OLD.status, NEW.status, OLD.payment_status, NEW.payment_status,
        OLD.shipping_status, NEW.shipping_status, NEW.upstream_updated_at, NEW.synced_at);
END;

COMMIT;
PRAGMA foreign_keys = ON;
