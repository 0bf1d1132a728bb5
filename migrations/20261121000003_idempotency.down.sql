DROP TRIGGER allocations_items_complete ON allocations;
DROP FUNCTION allocations_check_items();
DROP TABLE idempotency_keys;
