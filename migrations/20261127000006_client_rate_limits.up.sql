-- A client's own request limit at the origin (requests per minute); NULL: the configured default.
ALTER TABLE clients
    ADD COLUMN rate_limit_per_minute integer
        CONSTRAINT clients_rate_limit_positive CHECK (rate_limit_per_minute > 0);
