-- ASNs ordersync created, followed on each account's `asn_schedule` until their status is final.
CREATE TABLE asns (
    provider          TEXT        NOT NULL,
    account           TEXT        NOT NULL,
    asn_id            BIGINT      NOT NULL,
    warehouse_id      TEXT        NOT NULL,
    supplier_id       BIGINT      NOT NULL,
    supplier_ref      TEXT        NOT NULL,
    action_id         BIGINT      REFERENCES actions (id),
    status            TEXT,
    received_quantity BIGINT      NOT NULL DEFAULT 0,
    payload           JSON,
    is_final          BOOLEAN     NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL,
    checked_at        TIMESTAMPTZ,
    PRIMARY KEY (provider, account, asn_id)
);

CREATE INDEX asns_open ON asns (provider, account, is_final);
