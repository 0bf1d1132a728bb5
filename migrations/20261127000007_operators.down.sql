DROP TABLE cache_divergences;
DROP INDEX allocations_client_reference;
DROP INDEX allocations_client_created;
DROP INDEX allocations_created_brin;
ALTER TABLE product_denominations
    DROP COLUMN stock_state_at,
    DROP COLUMN stock_state,
    DROP COLUMN low_stock_threshold;
DROP TRIGGER inventories_void_is_final ON inventories;
DROP FUNCTION inventories_void_is_final();
DROP INDEX inventories_import;
-- A void card that was allocated loses its allocation: the older schema has no such state.
UPDATE inventories SET allocation_id = NULL, allocated_at = NULL, allocation_position = NULL
 WHERE status = 'void' AND allocation_id IS NOT NULL;
ALTER TABLE inventories
    DROP CONSTRAINT inventories_void_recorded,
    DROP CONSTRAINT inventories_allocation_matches_status,
    ADD CONSTRAINT inventories_allocation_matches_status CHECK (
        (status = 'allocated') = (allocation_id IS NOT NULL AND allocated_at IS NOT NULL AND allocation_position IS NOT NULL)
        AND (status = 'allocated' OR (allocation_id IS NULL AND allocated_at IS NULL AND allocation_position IS NULL))
    ),
    DROP COLUMN void_reason,
    DROP COLUMN voided_at,
    DROP COLUMN import_id;
DROP TABLE imports;
ALTER TABLE api_keys DROP COLUMN last_used_at, DROP COLUMN expires_at;
DROP TRIGGER audit_log_no_truncate ON audit_log;
DROP TRIGGER audit_log_append_only ON audit_log;
DROP FUNCTION audit_log_append_only();
DROP INDEX audit_log_action;
DROP INDEX audit_log_actor;
ALTER TABLE audit_log DROP COLUMN request_id;
ALTER TABLE audit_log RENAME COLUMN change TO details;
ALTER TABLE audit_log RENAME COLUMN target TO subject;
DROP TABLE operators;
