-- The two foreign keys an order's write checks (`orders` -> `order_scopes`, `order_events` ->
-- `orders`) are checked when the transaction commits instead of row by row; a violation still
-- fails the whole transaction. SQLite keeps a statement journal for a multi-row write inside a
-- transaction that may abort halfway (a copy of every existing page the statement changes), and
-- an immediate foreign key is such an abort. With order ids in random order of time a batch's
-- statements change most pages of the orders' unique index, and that copying was about a third
-- of what writing a new order cost.
-- Only the constraints' text changes, not how anything is stored, so the schema's text is edited
-- in place, as SQLite documents for changes to constraints, instead of rebuilding both tables.
PRAGMA writable_schema = ON;

UPDATE sqlite_schema
SET sql = replace(sql,
    'REFERENCES order_scopes (id, provider, account, channel)',
    'REFERENCES order_scopes (id, provider, account, channel) DEFERRABLE INITIALLY DEFERRED')
WHERE type = 'table' AND name = 'orders';

UPDATE sqlite_schema
SET sql = replace(sql,
    'REFERENCES orders (id) ON DELETE CASCADE',
    'REFERENCES orders (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED')
WHERE type = 'table' AND name = 'order_events';

-- Reloads this connection's copy of the schema.
PRAGMA writable_schema = RESET;

-- A change of schema bumps its version, so every other connection reloads it too.
CREATE TABLE schema_version_bump (unused INTEGER);
DROP TABLE schema_version_bump;
