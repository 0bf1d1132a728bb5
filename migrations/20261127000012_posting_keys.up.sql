-- An operator's Idempotency-Key on a deposit or an adjustment: under one key, a client's
-- account in a currency is posted to at most once, so a retried or double-submitted top-up is
-- answered with the entry it made instead of being posted again. The ledger is new in the
-- previous migration of the same release, so building the index here holds its lock briefly.
ALTER TABLE ledger_entries ADD COLUMN idempotency_key text;

ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_idempotency_key_shape CHECK (
    idempotency_key IS NULL
    OR (kind IN ('deposit', 'adjustment') AND idempotency_key ~ '^[!-~]{1,255}$')
) NOT VALID;
ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_idempotency_key_shape;

CREATE UNIQUE INDEX ledger_entries_one_posting_per_key
    ON ledger_entries (client_id, currency, idempotency_key) WHERE idempotency_key IS NOT NULL;
