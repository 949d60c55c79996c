-- Several replicas on one database: which replica does each account's work (docs/architecture.md,
-- "Leases and fencing"). A lease is taken when it is free (holder NULL) or expired, and every take
-- raises its token; the holder's writes for the account check the token in their own transaction,
-- so a replica that lost the lease (paused past its expiry) cannot write after another took it.
CREATE TABLE account_leases (
    provider    TEXT        NOT NULL,
    account     TEXT        NOT NULL,
    holder      TEXT,
    token       BIGINT      NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, account)
);

-- The replicas alive now (seen within their lease TTL): the accounts are spread over them.
CREATE TABLE replicas (
    holder     TEXT        PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
