-- The operators' surface: operators and their tokens, an append-only audit trail, card voids
-- and imports, key rotation and last use, stock thresholds and states, and the reconciler's
-- divergences.

-- People who run a region. A token is stored only as the SHA-256 digest of its secret.
CREATE TABLE operators (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_id     text NOT NULL CHECK (token_id ~ '^[A-Za-z0-9]{16}$'),
    token_digest bytea NOT NULL CHECK (octet_length(token_digest) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CONSTRAINT operators_token_id_unique UNIQUE (token_id)
);

-- The audit trail names what it holds: who (an operator id, or cli:<os user>), did what, to
-- which target, the change, and the request it came with.
ALTER TABLE audit_log RENAME COLUMN subject TO target;
ALTER TABLE audit_log RENAME COLUMN details TO change;
ALTER TABLE audit_log ADD COLUMN request_id text CHECK (request_id IS NULL OR length(request_id) <= 128);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);

-- Append-only: nothing updates or deletes a row, except the retention job, which says so for
-- its own transaction (SET LOCAL allot.audit_prune = 'on') and may then delete only rows older
-- than 30 days.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('allot.audit_prune', true) = 'on'
       AND OLD.at < now() - interval '30 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is refused', TG_OP
        USING ERRCODE = 'integrity_constraint_violation', CONSTRAINT = 'audit_log_append_only', TABLE = 'audit_log';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Keys: a rotated key lives until its expiry; last use is written at most once a minute.
ALTER TABLE api_keys
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz;

-- Imports: one row per uploaded file, with its progress and its first problems.
CREATE TABLE imports (
    id                 uuid PRIMARY KEY,
    product_id         text NOT NULL,
    denomination_minor bigint NOT NULL,
    state              text NOT NULL DEFAULT 'receiving'
                       CHECK (state IN ('receiving', 'validating', 'committing', 'committed', 'rejected', 'failed')),
    lines_read         bigint NOT NULL DEFAULT 0 CHECK (lines_read >= 0),
    accepted           bigint NOT NULL DEFAULT 0 CHECK (accepted >= 0),
    rejected           bigint NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    problems           jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    CONSTRAINT imports_denomination_offered FOREIGN KEY (product_id, denomination_minor)
        REFERENCES product_denominations (product_id, denomination_minor),
    CONSTRAINT imports_finished CHECK ((state IN ('committed', 'rejected', 'failed')) = (finished_at IS NOT NULL))
);

CREATE INDEX imports_created ON imports (created_at DESC);

-- Cards remember their import and, once void, when and why. A void card keeps its allocation
-- (the caller's allocation shows it as voided).
ALTER TABLE inventories
    ADD COLUMN import_id uuid,
    ADD COLUMN voided_at timestamptz,
    ADD COLUMN void_reason text CHECK (void_reason IS NULL OR length(void_reason) BETWEEN 1 AND 500);

UPDATE inventories SET voided_at = updated_at, void_reason = 'voided before reasons were recorded'
 WHERE status = 'void';

ALTER TABLE inventories
    DROP CONSTRAINT inventories_allocation_matches_status,
    ADD CONSTRAINT inventories_allocation_matches_status CHECK (
        (allocation_id IS NULL) = (allocated_at IS NULL)
        AND (allocation_id IS NULL) = (allocation_position IS NULL)
        AND (status <> 'allocated' OR allocation_id IS NOT NULL)
        AND (status <> 'active' OR allocation_id IS NULL)
    ) NOT VALID,
    ADD CONSTRAINT inventories_void_recorded CHECK (
        (status = 'void') = (voided_at IS NOT NULL) AND (voided_at IS NULL) = (void_reason IS NULL)
    ) NOT VALID;
ALTER TABLE inventories VALIDATE CONSTRAINT inventories_allocation_matches_status;
ALTER TABLE inventories VALIDATE CONSTRAINT inventories_void_recorded;

CREATE INDEX inventories_import ON inventories (import_id) WHERE import_id IS NOT NULL;

-- A void card never becomes active (or allocated) again, whatever writes it.
CREATE FUNCTION inventories_void_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'card % is void and stays void', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'inventories_void_is_final', TABLE = 'inventories';
END
$$;

CREATE TRIGGER inventories_void_is_final
    BEFORE UPDATE OF status ON inventories
    FOR EACH ROW WHEN (OLD.status = 'void' AND NEW.status <> 'void')
    EXECUTE FUNCTION inventories_void_is_final();

-- Stock: a low-stock threshold per bucket (NULL: the configured default) and the state last
-- published, so each transition is emitted once.
ALTER TABLE product_denominations
    ADD COLUMN low_stock_threshold integer CHECK (low_stock_threshold IS NULL OR low_stock_threshold >= 0),
    ADD COLUMN stock_state text NOT NULL DEFAULT 'ok' CHECK (stock_state IN ('ok', 'low', 'out')),
    ADD COLUMN stock_state_at timestamptz NOT NULL DEFAULT now();

-- Allocations per hour and day are counted by time: a BRIN index costs inserts next to nothing
-- on a table written in time order. Operators look allocations up by client and by reference.
CREATE INDEX allocations_created_brin ON allocations USING brin (created_at);
CREATE INDEX allocations_client_created ON allocations (client_id, created_at DESC, id DESC);
CREATE INDEX allocations_client_reference ON allocations (client_reference) WHERE client_reference IS NOT NULL;

-- What the reconciler found and did: when, which bucket, both counts (NULL: the set was
-- missing), and whether the rebuild healed it.
CREATE TABLE cache_divergences (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                 timestamptz NOT NULL DEFAULT now(),
    product_id         text NOT NULL,
    denomination_minor bigint NOT NULL,
    postgres_active    bigint NOT NULL CHECK (postgres_active >= 0),
    cache_active       bigint CHECK (cache_active IS NULL OR cache_active >= 0),
    healed             boolean NOT NULL
);

CREATE INDEX cache_divergences_at ON cache_divergences (at);
