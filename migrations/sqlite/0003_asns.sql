-- ASNs ordersync created, followed on each account's `asn_schedule` until their status is final.
CREATE TABLE asns (
    provider          TEXT    NOT NULL,
    account           TEXT    NOT NULL,
    asn_id            INTEGER NOT NULL,
    warehouse_id      TEXT    NOT NULL,
    supplier_id       INTEGER NOT NULL,
    supplier_ref      TEXT    NOT NULL,
    action_id         INTEGER REFERENCES actions (id),
    status            TEXT,
    received_quantity INTEGER NOT NULL DEFAULT 0,
    payload           TEXT,
    is_final          INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT    NOT NULL,
    checked_at        TEXT,
    PRIMARY KEY (provider, account, asn_id)
);

CREATE INDEX asns_open ON asns (provider, account, is_final);
