-- pgbench baselines (b) and (c): one hot bucket of cards shaped like the engine's inventory
-- (status column, partial index of active cards per bucket, same fillfactor and autovacuum
-- settings), rebuilt before each run so both start from the same table.
-- psql variables: cards (rows in the hot bucket).
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_cards;
CREATE TABLE bench_cards (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id         text NOT NULL,
    denomination_minor bigint NOT NULL,
    code_ciphertext    bytea NOT NULL,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'allocated')),
    allocated_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
) WITH (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000,
    autovacuum_vacuum_cost_delay = 1
);
INSERT INTO bench_cards (product_id, denomination_minor, code_ciphertext)
SELECT 'hot', 1000, sha256(int8send(g)) || sha256(int8send(-g)) FROM generate_series(1, :cards) g;
CREATE INDEX bench_cards_active ON bench_cards (product_id, denomination_minor) WHERE status = 'active';
VACUUM ANALYZE bench_cards;
