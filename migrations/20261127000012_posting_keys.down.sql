DROP INDEX ledger_entries_one_posting_per_key;
ALTER TABLE ledger_entries DROP COLUMN idempotency_key;
