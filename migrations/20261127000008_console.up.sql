-- The operator console: signed-in sessions, and import progress in bytes so a page can draw a bar.

-- One row per console sign-in. The cookie carries a random secret; only its SHA-256 digest is
-- stored. A session ends on sign-out, on idle expiry, at its absolute end, or when its
-- operator's token is revoked or expires (checked on every request).
CREATE TABLE console_sessions (
    id_digest    bytea PRIMARY KEY CHECK (octet_length(id_digest) = 32),
    operator_id  uuid NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    -- The synchronizer token every form and script request must echo.
    csrf_token   text NOT NULL CHECK (length(csrf_token) BETWEEN 32 AND 128),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    -- A one-shot notice for the next page (the outcome of a form), cleared when shown.
    notice       jsonb,
    CONSTRAINT console_sessions_ends_after_start CHECK (expires_at > created_at)
);

CREATE INDEX console_sessions_operator ON console_sessions (operator_id) WHERE ended_at IS NULL;

-- Bytes of the upload read so far, and its announced length (Content-Length) when known.
ALTER TABLE imports
    ADD COLUMN bytes_read bigint NOT NULL DEFAULT 0 CHECK (bytes_read >= 0),
    ADD COLUMN bytes_expected bigint CHECK (bytes_expected IS NULL OR bytes_expected >= 0);
