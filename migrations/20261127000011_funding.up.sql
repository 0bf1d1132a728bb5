-- Funding: prepaid balances per client and currency, prices (face value less a client's
-- discount per product), and a double-entry ledger. A client without a funding account in a
-- product's currency allocates without limit, as before this migration.

-- One account per client and currency. The balance is the sum of the account's ledger entries
-- (the ledger-check job verifies it); it is kept here so that a debit is one conditional update.
-- It may go below zero only down to the credit limit: the CHECK is the last line of defence
-- behind the allocation's own headroom test.
CREATE TABLE funding_accounts (
    client_id           uuid NOT NULL REFERENCES clients (id),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance_minor       bigint NOT NULL DEFAULT 0,
    credit_limit_minor  bigint NOT NULL DEFAULT 0 CHECK (credit_limit_minor >= 0),
    -- At or below this balance a `balance.low` event is written once per crossing; NULL: never.
    low_balance_minor   bigint,
    -- Whether voiding an allocated card credits its price back.
    credit_voids        boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, currency),
    CONSTRAINT funding_accounts_within_credit CHECK (balance_minor + credit_limit_minor >= 0)
);

-- A client's price of a product: face value less this many basis points (the discount is
-- rounded down to whole minor units, so the price is rounded up).
CREATE TABLE client_discounts (
    client_id     uuid NOT NULL REFERENCES clients (id),
    product_id    text NOT NULL REFERENCES products (id),
    discount_bps  integer NOT NULL CHECK (discount_bps BETWEEN 0 AND 10000),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, product_id)
);

-- The journal. Every entry moves `amount_minor` from `debit_account` to `credit_account`, so the
-- books balance by construction. `client` is the entry's client's account in its currency; the
-- platform's accounts are `deposits` (money received), `sales` (cards sold) and `adjustments`.
--   deposit     debit deposits     credit client
--   allocation  debit client       credit sales        (one per allocation: unit price × quantity)
--   reversal    debit sales        credit client       (one per voided card: its unit price)
--   adjustment  debit adjustments  credit client, or the other way round
CREATE TABLE ledger_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id       uuid NOT NULL,
    currency        text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('deposit', 'allocation', 'reversal', 'adjustment')),
    debit_account   text NOT NULL CHECK (debit_account IN ('client', 'deposits', 'sales', 'adjustments')),
    credit_account  text NOT NULL CHECK (credit_account IN ('client', 'deposits', 'sales', 'adjustments')),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    -- No foreign key: an allocation's entry is written by the statement that inserts the
    -- allocation (and a reversal's by the void of one of its cards); a key check per entry would
    -- cost the hot path for what the statement already guarantees.
    allocation_id   uuid,
    card_id         bigint,
    memo            text CHECK (length(memo) <= 500),
    actor           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (client_id, currency) REFERENCES funding_accounts (client_id, currency),
    CONSTRAINT ledger_entries_one_side_is_the_client
        CHECK ((debit_account = 'client') <> (credit_account = 'client')),
    CONSTRAINT ledger_entries_shape CHECK (
        CASE kind
            WHEN 'deposit' THEN debit_account = 'deposits' AND allocation_id IS NULL AND card_id IS NULL
            WHEN 'allocation' THEN debit_account = 'client' AND credit_account = 'sales'
                                   AND allocation_id IS NOT NULL AND card_id IS NULL
            WHEN 'reversal' THEN debit_account = 'sales' AND allocation_id IS NOT NULL AND card_id IS NOT NULL
            ELSE 'adjustments' IN (debit_account, credit_account) AND allocation_id IS NULL AND card_id IS NULL
        END)
);

-- A client's ledger, newest first (GET /v1/ledger, statements).
CREATE INDEX ledger_entries_client ON ledger_entries (client_id, id DESC);
-- A voided card is credited back once.
CREATE UNIQUE INDEX ledger_entries_one_reversal_per_card ON ledger_entries (card_id) WHERE kind = 'reversal';

-- What a funded allocation was charged per card (NULL: the client had no account in the
-- product's currency). A reversal credits this back.
ALTER TABLE allocations ADD COLUMN unit_price_minor bigint CHECK (unit_price_minor >= 0);
