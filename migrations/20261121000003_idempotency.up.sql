-- One row per (client, Idempotency-Key), written in the allocation's own transaction (in the
-- same statement on the fast path). A replay re-renders the allocation it points to.

CREATE TABLE idempotency_keys (
    client_id           uuid NOT NULL REFERENCES clients (id),
    key                 text NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    request_fingerprint bytea NOT NULL CHECK (octet_length(request_fingerprint) = 32),
    allocation_id       uuid NOT NULL REFERENCES allocations (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- An allocation has exactly `quantity` items, checked at commit: all or nothing, whatever
-- statement or transaction wrote it.
CREATE FUNCTION allocations_check_items() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n FROM allocation_items WHERE allocation_id = NEW.id;
    IF n <> NEW.quantity THEN
        RAISE EXCEPTION 'allocation % has % of its % items', NEW.id, n, NEW.quantity
            USING ERRCODE = 'check_violation', CONSTRAINT = 'allocations_items_complete', TABLE = 'allocations';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER allocations_items_complete
    AFTER INSERT ON allocations
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION allocations_check_items();
