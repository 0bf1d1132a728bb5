ALTER TABLE imports DROP COLUMN bytes_expected, DROP COLUMN bytes_read;
DROP TABLE console_sessions;
