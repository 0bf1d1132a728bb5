-- (b) The naive allocation: lock the first active card of the hot bucket, then mark it.
-- Every client queues on the same row; a waiter whose row was taken re-checks and moves on.
-- (The CTE only guarantees one result row for \gset when nothing was found.)
BEGIN;
WITH c AS (SELECT id FROM bench_cards WHERE product_id = 'hot' AND denomination_minor = 1000 AND status = 'active' LIMIT 1 FOR UPDATE) SELECT coalesce(max(id), 0) AS card_id FROM c \gset
UPDATE bench_cards SET status = 'allocated', allocated_at = now(), updated_at = now() WHERE id = :card_id;
END;
