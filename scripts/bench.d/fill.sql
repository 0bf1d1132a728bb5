-- Fill a benchmark database by SQL, in chunks of one transaction each.
--
-- Before this runs, scripts/bench has loaded a few thousand real cards per bucket with
-- `allot import` (encrypted with the run's card key, bound to their product and
-- denomination). Here they are multiplied: each copy keeps a real card's ciphertext (so it still
-- decrypts: the sealing binds product and denomination, not the row) and gets a fresh unique
-- code_digest.
--
-- psql variables:
--   client         the benchmark client's id (owner of the history)
--   hot_target     active cards wanted in the hot bucket (bench-hot)
--   spread_target  active cards wanted in each spread bucket (bench-sNN, every denomination)
--   backlog        more active cards per bucket (hot and spread), to reach the filled size
--   allocations    past allocations to write, spread over four weeks (0: none)
--
-- The history is consistent with the schema: every allocation has exactly `quantity` cards,
-- each with allocation_id, allocation_position and allocated_at set (the deferred constraint
-- trigger allocations_cards_complete checks it at each chunk's commit); the Idempotency-Key of
-- an allocation younger than the retention (24 h) is live (request_fingerprint set), older ones
-- have expired as the idempotency-expiry job leaves them; each allocation has its published
-- outbox event.

\set ON_ERROR_STOP on

CREATE TEMP TABLE bench_params AS
SELECT :'client'::uuid AS client_id, :'hot_target'::bigint AS hot_target,
       :'spread_target'::bigint AS spread_target, :'backlog'::bigint AS backlog,
       :'allocations'::bigint AS allocations;

-- The buckets: bench-hot's denomination and every denomination of the spread products.
CREATE TEMP TABLE bench_bucket AS
SELECT (row_number() OVER (ORDER BY d.product_id, d.denomination_minor) - 1)::int AS bucket,
       d.product_id, d.denomination_minor, p.currency,
       CASE WHEN d.product_id = 'bench-hot' THEN bp.hot_target ELSE bp.spread_target END + bp.backlog AS target
  FROM product_denominations d
  JOIN products p ON p.id = d.product_id
 CROSS JOIN bench_params bp
 WHERE d.product_id = 'bench-hot' OR d.product_id LIKE 'bench-s%';

-- The real cards each bucket's copies are made from, numbered 0..n-1 per bucket.
CREATE TEMP TABLE bench_seed AS
SELECT b.bucket, (row_number() OVER (PARTITION BY b.bucket ORDER BY i.id) - 1)::int AS rn,
       i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at
  FROM inventories i
  JOIN bench_bucket b USING (product_id, denomination_minor)
 WHERE i.status = 'active';
CREATE UNIQUE INDEX ON bench_seed (bucket, rn);

ALTER TABLE bench_bucket ADD COLUMN seeds int, ADD COLUMN extra bigint;
UPDATE bench_bucket b
   SET seeds = s.n, extra = greatest(0, b.target - s.n)
  FROM (SELECT bucket, count(*)::int AS n FROM bench_seed GROUP BY bucket) s
 WHERE s.bucket = b.bucket;
ANALYZE bench_bucket;
ANALYZE bench_seed;

SELECT count(*) AS buckets, min(seeds) AS min_seed_cards, sum(extra) AS cards_to_copy
  FROM bench_bucket \gset
\echo fill: :buckets buckets, at least :min_seed_cards real cards each; :cards_to_copy active copies to write
SELECT count(*) AS unseeded FROM bench_bucket WHERE seeds IS NULL \gset
SELECT :unseeded > 0 AS has_unseeded \gset
\if :has_unseeded
DO $$ BEGIN RAISE EXCEPTION 'fill: some buckets have no real cards to copy'; END $$;
\endif

-- ------------------------------------------------------------------ history (filled size only)
-- Allocation g (0-based, oldest first) is in bucket (g * 7919) mod buckets; its quantity is 2 for
-- one in ten, 5 for one in fifty, else 1 (1.18 cards per allocation on average).
DO $$
DECLARE
    v_total   bigint := (SELECT allocations FROM bench_params);
    v_client  uuid := (SELECT client_id FROM bench_params);
    v_buckets int := (SELECT count(*) FROM bench_bucket);
    v_step    bigint := 100000;
    v_lo      bigint := 0;
    v_started timestamptz := clock_timestamp();
BEGIN
    WHILE v_lo < v_total LOOP
        WITH src AS MATERIALIZED (
            SELECT g, gen_random_uuid() AS id, b.bucket, b.seeds, b.product_id, b.denomination_minor, b.currency,
                   CASE WHEN g % 10 = 3 THEN 2 WHEN g % 50 = 7 THEN 5 ELSE 1 END AS quantity,
                   now() - interval '28 days' * (1 - g::float8 / v_total) AS created_at
              FROM generate_series(v_lo, least(v_lo + v_step, v_total) - 1) AS g
              JOIN bench_bucket b ON b.bucket = ((g * 7919) % v_buckets)::int
        ), a AS (
            INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                                     idempotency_key, request_fingerprint, created_at)
            SELECT id, v_client, product_id, denomination_minor, quantity,
                   CASE WHEN g % 2 = 0 THEN 'order-' || g END,
                   'hist-' || g,
                   CASE WHEN created_at > now() - interval '24 hours' THEN sha256(uuid_send(id)) END,
                   created_at
              FROM src
            RETURNING id
        ), events AS (
            INSERT INTO outbox (topic, aggregate_id, payload, created_at, published_at, attempts, next_attempt_at)
            SELECT 'allocation.created', s.id::text,
                   jsonb_build_object('allocation_id', s.id, 'client_id', v_client, 'product_id', s.product_id,
                                      'denomination', to_char(s.denomination_minor / 100.0, 'FM999999990.00'),
                                      'currency', s.currency, 'quantity', s.quantity, 'card_ids', '[]'::jsonb),
                   s.created_at, s.created_at + interval '15 milliseconds', 1, s.created_at
              FROM src s
        )
        INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id,
                                 code_digest, expires_at, status, allocation_id, allocation_position,
                                 allocated_at, created_at, updated_at)
        SELECT s.product_id, s.denomination_minor, sd.code_ciphertext, sd.code_nonce, sd.code_key_id,
               sha256(uuid_send(gen_random_uuid())), sd.expires_at, 'allocated', s.id, p.pos::smallint,
               s.created_at, s.created_at - interval '3 days', s.created_at
          FROM src s
         CROSS JOIN LATERAL generate_series(0, s.quantity - 1) AS p(pos)
          JOIN bench_seed sd ON sd.bucket = s.bucket AND sd.rn = ((s.g * 5 + p.pos) % s.seeds)::int;
        COMMIT;
        v_lo := least(v_lo + v_step, v_total);
        RAISE NOTICE 'fill: history % of % allocations (% s)', v_lo, v_total,
            round(extract(epoch FROM clock_timestamp() - v_started)::numeric, 1);
    END LOOP;
END
$$;

-- ------------------------------------------------------------------ active stock
-- Round by round, every bucket that still needs cards gets the next block of copies, so the
-- buckets are interleaved in the table as they would be after many loads.
DO $$
DECLARE
    v_max     bigint := (SELECT coalesce(max(extra), 0) FROM bench_bucket);
    v_lo      bigint := 0;
    v_width   bigint;
    v_active  int;
    v_written bigint := 0;
    v_total   bigint := (SELECT sum(extra) FROM bench_bucket);
    v_started timestamptz := clock_timestamp();
    v_n       bigint;
BEGIN
    WHILE v_lo < v_max LOOP
        SELECT count(*) INTO v_active FROM bench_bucket WHERE extra > v_lo;
        v_width := greatest(1000, 250000 / greatest(v_active, 1));
        INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id,
                                 code_digest, expires_at)
        SELECT b.product_id, b.denomination_minor, s.code_ciphertext, s.code_nonce, s.code_key_id,
               sha256(uuid_send(gen_random_uuid())), s.expires_at
          FROM bench_bucket b
         CROSS JOIN LATERAL generate_series(v_lo, least(v_lo + v_width, b.extra) - 1) AS g
          JOIN bench_seed s ON s.bucket = b.bucket AND s.rn = (g % b.seeds)::int
         WHERE b.extra > v_lo;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        COMMIT;
        v_written := v_written + v_n;
        v_lo := v_lo + v_width;
        RAISE NOTICE 'fill: active copies % of % (% s)', v_written, v_total,
            round(extract(epoch FROM clock_timestamp() - v_started)::numeric, 1);
    END LOOP;
END
$$;

SELECT count(*) FILTER (WHERE status = 'active') AS active,
       count(*) FILTER (WHERE status = 'allocated') AS allocated,
       count(*) AS cards
  FROM inventories \gset
SELECT count(*) AS allocations FROM allocations \gset
\echo fill: done: :cards cards (:active active, :allocated allocated), :allocations allocations
