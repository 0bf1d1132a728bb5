-- One row per (client, Idempotency-Key), written in the allocation's own transaction.
-- The stored response holds card codes, so it is encrypted like the codes themselves.

CREATE TABLE idempotency_keys (
    client_id           uuid NOT NULL REFERENCES clients (id),
    key                 text NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    request_fingerprint bytea NOT NULL CHECK (octet_length(request_fingerprint) = 32),
    allocation_id       uuid REFERENCES allocations (id),
    response_status     smallint,
    response_ciphertext bytea,
    response_nonce      bytea CHECK (response_nonce IS NULL OR octet_length(response_nonce) = 12),
    response_key_id     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key),
    -- A row is either being written (nothing stored yet) or complete (everything stored).
    CONSTRAINT idempotency_keys_complete CHECK (
        (response_status IS NULL AND response_ciphertext IS NULL AND response_nonce IS NULL AND response_key_id IS NULL)
        OR (response_status IS NOT NULL AND response_ciphertext IS NOT NULL AND response_nonce IS NOT NULL AND response_key_id IS NOT NULL)
    )
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
