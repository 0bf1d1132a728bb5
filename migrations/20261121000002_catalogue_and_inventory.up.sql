-- Products and their cards. One row per card; the code is AEAD-encrypted, the key id beside it.

CREATE TABLE products (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The denominations a product is offered in; the catalogue lists these even when sold out.
CREATE TABLE product_denominations (
    product_id         text NOT NULL REFERENCES products (id),
    denomination_minor bigint NOT NULL CHECK (denomination_minor > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, denomination_minor)
);

CREATE TABLE allocations (
    id                 uuid PRIMARY KEY,
    client_id          uuid NOT NULL REFERENCES clients (id),
    product_id         text NOT NULL REFERENCES products (id),
    denomination_minor bigint NOT NULL CHECK (denomination_minor > 0),
    quantity           integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    client_reference   text,
    idempotency_key    text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX allocations_client_created ON allocations (client_id, created_at);

CREATE TABLE inventories (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id         text NOT NULL,
    denomination_minor bigint NOT NULL,
    -- AEAD ciphertext of the code (and PIN), its nonce and the id of the key that sealed it.
    code_ciphertext    bytea NOT NULL,
    code_nonce         bytea NOT NULL CHECK (octet_length(code_nonce) = 12),
    code_key_id        text NOT NULL CHECK (length(code_key_id) BETWEEN 1 AND 64),
    -- Keyed digest of the plain code: the same code can never be loaded twice.
    code_digest        bytea NOT NULL CHECK (octet_length(code_digest) = 32),
    expires_at         timestamptz,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'allocated', 'void')),
    allocation_id      uuid REFERENCES allocations (id),
    allocated_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inventories_denomination_offered FOREIGN KEY (product_id, denomination_minor)
        REFERENCES product_denominations (product_id, denomination_minor),
    CONSTRAINT inventories_code_digest_unique UNIQUE (code_digest),
    -- An allocated card has an allocation, and only an allocated card has one.
    CONSTRAINT inventories_allocation_matches_status CHECK (
        (status = 'allocated') = (allocation_id IS NOT NULL AND allocated_at IS NOT NULL)
        AND (status = 'allocated' OR (allocation_id IS NULL AND allocated_at IS NULL))
    )
) WITH (
    fillfactor = 90,
    -- Every allocation rewrites rows: vacuum early and fast so dead tuples do not pile up.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000,
    autovacuum_vacuum_cost_delay = 1
);

-- The one index that finds and counts active cards of a bucket. Partial, so it holds only what
-- can still be allocated and stays small however much history the table has; without the id
-- column its equal keys deduplicate into posting lists (a tenth of the size), which halves the
-- reconciler's count over a million cards. Allocation takes any active card, in no order.
CREATE INDEX inventories_active_bucket
    ON inventories (product_id, denomination_minor)
    WHERE status = 'active';

CREATE TABLE allocation_items (
    allocation_id uuid NOT NULL REFERENCES allocations (id),
    position      smallint NOT NULL CHECK (position >= 0),
    card_id       bigint NOT NULL REFERENCES inventories (id),
    PRIMARY KEY (allocation_id, position),
    -- A card belongs to at most one allocation.
    CONSTRAINT allocation_items_card_once UNIQUE (card_id)
);
