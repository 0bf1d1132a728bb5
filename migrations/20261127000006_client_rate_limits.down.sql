ALTER TABLE clients DROP COLUMN rate_limit_per_minute;
