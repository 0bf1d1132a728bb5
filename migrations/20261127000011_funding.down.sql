ALTER TABLE allocations DROP COLUMN unit_price_minor;
DROP TABLE ledger_entries;
DROP TABLE client_discounts;
DROP TABLE funding_accounts;
