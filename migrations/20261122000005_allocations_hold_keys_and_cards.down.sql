-- Back to separate idempotency_keys and allocation_items tables, rebuilt from the columns.

CREATE TABLE allocation_items (
    allocation_id uuid NOT NULL REFERENCES allocations (id),
    position      smallint NOT NULL CHECK (position >= 0),
    card_id       bigint NOT NULL REFERENCES inventories (id),
    PRIMARY KEY (allocation_id, position),
    CONSTRAINT allocation_items_card_once UNIQUE (card_id)
);

INSERT INTO allocation_items (allocation_id, position, card_id)
SELECT allocation_id, allocation_position, id FROM inventories WHERE allocation_id IS NOT NULL;

CREATE TABLE idempotency_keys (
    client_id           uuid NOT NULL REFERENCES clients (id),
    key                 text NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    request_fingerprint bytea NOT NULL CHECK (octet_length(request_fingerprint) = 32),
    allocation_id       uuid NOT NULL REFERENCES allocations (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

INSERT INTO idempotency_keys (client_id, key, request_fingerprint, allocation_id, created_at)
SELECT client_id, idempotency_key, request_fingerprint, id, created_at
  FROM allocations WHERE request_fingerprint IS NOT NULL;

DROP TRIGGER allocations_cards_complete ON allocations;

CREATE OR REPLACE FUNCTION allocations_check_items() RETURNS trigger LANGUAGE plpgsql AS $$
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

DROP INDEX inventories_allocation_cards;
ALTER TABLE inventories
    DROP CONSTRAINT inventories_allocation_matches_status,
    ADD CONSTRAINT inventories_allocation_matches_status CHECK (
        (status = 'allocated') = (allocation_id IS NOT NULL AND allocated_at IS NOT NULL)
        AND (status = 'allocated' OR (allocation_id IS NULL AND allocated_at IS NULL))
    );
ALTER TABLE inventories DROP COLUMN allocation_position;

ALTER TABLE allocations
    DROP CONSTRAINT allocations_denomination_offered,
    ADD CONSTRAINT allocations_product_id_fkey FOREIGN KEY (product_id) REFERENCES products (id);

CREATE INDEX allocations_client_created ON allocations (client_id, created_at);
DROP INDEX allocations_key_expiry;
DROP INDEX allocations_idempotency_key;
ALTER TABLE allocations
    DROP CONSTRAINT allocations_idempotency_key_length,
    DROP COLUMN request_fingerprint;
