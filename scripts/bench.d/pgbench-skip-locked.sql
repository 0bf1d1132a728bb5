-- (c) The same allocation with SKIP LOCKED: each client takes the first card nobody holds.
BEGIN;
WITH c AS (SELECT id FROM bench_cards WHERE product_id = 'hot' AND denomination_minor = 1000 AND status = 'active' LIMIT 1 FOR UPDATE SKIP LOCKED) SELECT coalesce(max(id), 0) AS card_id FROM c \gset
UPDATE bench_cards SET status = 'allocated', allocated_at = now(), updated_at = now() WHERE id = :card_id;
END;
