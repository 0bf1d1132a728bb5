-- Callers of the API and their keys. Key secrets are stored only as SHA-256 digests.

CREATE TABLE clients (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    region      text NOT NULL CHECK (region ~ '^[a-z][a-z0-9]{1,7}$'),
    plan        text NOT NULL DEFAULT 'default' CHECK (plan ~ '^[a-z][a-z0-9_-]{0,31}$'),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id        text PRIMARY KEY CHECK (key_id ~ '^[A-Za-z0-9]{16}$'),
    client_id     uuid NOT NULL REFERENCES clients (id),
    secret_digest bytea NOT NULL CHECK (octet_length(secret_digest) = 32),
    label         text CHECK (label IS NULL OR length(label) <= 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE INDEX api_keys_client ON api_keys (client_id);
