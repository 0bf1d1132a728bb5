-- pgbench baseline (a): a small accounts table; each transaction updates one random row.
-- psql variables: accounts (rows).
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_accounts;
CREATE TABLE bench_accounts (
    id      integer PRIMARY KEY,
    balance bigint NOT NULL DEFAULT 0,
    filler  text NOT NULL
) WITH (fillfactor = 90);
INSERT INTO bench_accounts (id, filler) SELECT g, repeat('x', 84) FROM generate_series(1, :accounts) g;
VACUUM ANALYZE bench_accounts;
