//! Every statement of the allocation path, side by side, each written once.
//!
//! The allocation row carries the Idempotency-Key and the request's fingerprint; its unique
//! partial index on (client_id, idempotency_key) is what a concurrent duplicate waits on. A
//! deferred constraint trigger (`allocations_cards_complete`) requires every allocation to
//! have exactly `quantity` cards at commit.

use crate::funding::{balance_low_event_sql, unit_price_sql};

/// The fast write, for one request or many: `$1`–`$11` are one array per request field, and
/// `$12`–`$14` the wanted cards as (allocation, card, position). Each request stays
/// all-or-nothing and idempotent on its own: its cards are locked, it goes ahead only if every
/// one is still active and its client's funds cover it, its allocation is inserted with
/// `ON CONFLICT DO NOTHING` on the live key, and only the cards of allocations actually inserted
/// are claimed and charged. One row comes back per request that is not complete, not funded or
/// not inserted, and one per claimed card.
///
/// Funding (see [`crate::funding`]): the batch locks each funded client's account once, lets
/// its requests through in batch order while their running total fits the balance plus credit
/// limit, writes one ledger entry per allocation inserted and debits each account once, by the
/// batch's total: a busy client's account row is updated once per batch, not per allocation.
pub const WRITE_POPPED: &str = concat!(
    "
WITH req AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::text[], $6::bigint[], $7::int[],
                         $8::text[], $9::jsonb[], $10::text[], $11::text[])
        WITH ORDINALITY AS r(client_id, key, fingerprint, allocation_id, product_id, denomination_minor, quantity,
                             client_reference, event, trace_context, currency, ord)
), want AS (
    SELECT * FROM unnest($12::uuid[], $13::bigint[], $14::int[]) AS w(allocation_id, card_id, position)
), live AS (
    SELECT w.allocation_id, i.id
      FROM want w
      JOIN req r ON r.allocation_id = w.allocation_id
      JOIN inventories i ON i.id = w.card_id
     WHERE i.status = 'active' AND i.product_id = r.product_id AND i.denomination_minor = r.denomination_minor
       FOR UPDATE OF i
), complete AS (
    SELECT r.* FROM req r
     WHERE r.quantity = (SELECT count(*) FROM live l WHERE l.allocation_id = r.allocation_id)
), account AS (
    SELECT fa.client_id, fa.currency, fa.balance_minor + fa.credit_limit_minor AS headroom
      FROM funding_accounts fa
     WHERE (fa.client_id, fa.currency) IN (SELECT client_id, currency FROM complete)
       FOR UPDATE
), priced AS (
    SELECT c.*, ac.headroom, ",
    unit_price_sql!("c", "d"),
    " AS unit_price
      FROM complete c
      LEFT JOIN client_discounts d ON d.client_id = c.client_id AND d.product_id = c.product_id
      LEFT JOIN account ac ON ac.client_id = c.client_id AND ac.currency = c.currency
), charged AS (
    -- running: the batch's total so far of this client's requests that each fit alone, so one
    -- request too large for the balance does not refuse the smaller ones after it.
    SELECT pr.*, pr.unit_price * pr.quantity AS price,
           (sum(pr.unit_price * pr.quantity) FILTER (WHERE pr.unit_price * pr.quantity <= pr.headroom)
               OVER (PARTITION BY pr.client_id, pr.currency ORDER BY pr.ord))::bigint AS running
      FROM priced pr
), payable AS (
    SELECT * FROM charged WHERE headroom IS NULL OR (price <= headroom AND running <= headroom)
), a AS (
    INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                             idempotency_key, request_fingerprint, unit_price_minor)
    SELECT allocation_id, client_id, product_id, denomination_minor, quantity, client_reference, key, fingerprint,
           CASE WHEN headroom IS NOT NULL THEN unit_price END
      FROM payable
    ON CONFLICT (client_id, idempotency_key) WHERE request_fingerprint IS NOT NULL DO NOTHING
    RETURNING id, created_at
), debits AS (
    INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, allocation_id)
    SELECT p.client_id, p.currency, 'allocation', 'client', 'sales', p.price, p.allocation_id
      FROM payable p JOIN a ON a.id = p.allocation_id
     WHERE p.headroom IS NOT NULL AND p.price > 0
    RETURNING client_id, currency, amount_minor
), debited AS (
    UPDATE funding_accounts fa
       SET balance_minor = fa.balance_minor - d.total, updated_at = now()
      FROM (SELECT client_id, currency, sum(amount_minor)::bigint AS total FROM debits GROUP BY client_id, currency) d
     WHERE fa.client_id = d.client_id AND fa.currency = d.currency
    RETURNING fa.client_id, fa.currency, fa.balance_minor, fa.low_balance_minor, d.total
), low AS (",
    balance_low_event_sql!("debited"),
    "
), claimed AS (
    UPDATE inventories i
       SET status = 'allocated', allocation_id = w.allocation_id, allocation_position = w.position::smallint,
           allocated_at = now(), updated_at = now()
      FROM want w JOIN a ON a.id = w.allocation_id
     WHERE i.id = w.card_id
    RETURNING i.id, i.allocation_id, i.allocation_position, i.code_ciphertext, i.code_nonce, i.code_key_id,
              i.expires_at
), events AS (
    INSERT INTO outbox (topic, aggregate_id, payload, trace_context)
    SELECT 'allocation.created', c.allocation_id::text, c.event, c.trace_context
      FROM payable c JOIN a ON a.id = c.allocation_id
)
SELECT r.allocation_id,
       EXISTS (SELECT 1 FROM complete c WHERE c.allocation_id = r.allocation_id) AS complete,
       a.created_at, cl.id, cl.allocation_position, cl.code_ciphertext, cl.code_nonce, cl.code_key_id, cl.expires_at,
       CASE WHEN ch.price IS NOT NULL
            THEN greatest(ch.headroom - coalesce(ch.running - CASE WHEN ch.price <= ch.headroom THEN ch.price ELSE 0 END, 0), 0)
       END AS available_minor,
       ch.price AS required_minor
  FROM req r
  LEFT JOIN a ON a.id = r.allocation_id
  LEFT JOIN claimed cl ON cl.allocation_id = r.allocation_id
  LEFT JOIN charged ch ON ch.allocation_id = r.allocation_id
                      AND NOT EXISTS (SELECT 1 FROM payable p WHERE p.allocation_id = r.allocation_id)"
);

/// The slow path's first statement: the allocation row with its key; no row back when the
/// key is already live. Parameters: client, key, fingerprint, allocation, product,
/// denomination, quantity, client reference, the unit price charged (NULL: unfunded).
pub const INSERT_ALLOCATION: &str = "
INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                         idempotency_key, request_fingerprint, unit_price_minor)
VALUES ($4, $1, $5, $6, $7, $8, $2, $3, $9)
ON CONFLICT (client_id, idempotency_key) WHERE request_fingerprint IS NOT NULL DO NOTHING
RETURNING created_at";

/// Claim whichever of the ids `$1` are still active (row `$1` or a count, then the allocation,
/// the bucket, and the position the first card takes).
pub const CLAIM_BY_ID: &str = "
UPDATE inventories i
   SET status = 'allocated', allocation_id = $2, allocation_position = ($5 + u.ord - 1)::smallint,
       allocated_at = now(), updated_at = now()
  FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, ord)
 WHERE i.id = u.id AND i.status = 'active' AND i.product_id = $3 AND i.denomination_minor = $4
RETURNING i.id, i.allocation_position AS position, i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at";

/// Claim up to `$1` active cards of the bucket that nobody else has locked.
// A CTE with a locking clause runs exactly once. (As `WHERE id IN (subquery)` the planner may
// rescan the LIMIT … SKIP LOCKED subquery per outer row and find nothing under concurrency.)
pub const CLAIM_FROM_POSTGRES: &str = "
WITH picked AS (
    SELECT id FROM inventories
     WHERE product_id = $3 AND denomination_minor = $4 AND status = 'active'
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT id, row_number() OVER () AS n FROM picked
)
UPDATE inventories i
   SET status = 'allocated', allocation_id = $2, allocation_position = ($5 + numbered.n - 1)::smallint,
       allocated_at = now(), updated_at = now()
  FROM numbered
 WHERE i.id = numbered.id
RETURNING i.id, i.allocation_position AS position, i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at";

/// The outbox event of a slow-path allocation.
pub const INSERT_EVENT: &str = "
INSERT INTO outbox (topic, aggregate_id, payload, trace_context)
VALUES ('allocation.created', $1::text, $2, $3)";

/// The live allocation behind a client's key, with the fingerprint it was made with.
pub const LIVE_KEY: &str = "
SELECT request_fingerprint, id FROM allocations
 WHERE client_id = $1 AND idempotency_key = $2 AND request_fingerprint IS NOT NULL";

/// The live allocations behind many (client, key) pairs at once; `ord` numbers the pairs from 1.
pub const LIVE_KEYS: &str = "
SELECT k.ord, a.request_fingerprint, a.id
  FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS k(client_id, key, ord)
  JOIN allocations a
    ON a.client_id = k.client_id AND a.idempotency_key = k.key AND a.request_fingerprint IS NOT NULL";

/// An allocation's head, to its owner only.
pub const ALLOCATION_HEAD: &str = "
SELECT a.product_id, a.denomination_minor, a.quantity, a.client_reference, a.created_at, p.currency
  FROM allocations a JOIN products p ON p.id = a.product_id
 WHERE a.id = $1 AND a.client_id = $2";

/// An allocation's cards, in their positions, with when each was voided (if it was).
pub const ALLOCATION_CARDS: &str = "
SELECT id, allocation_position AS position, code_ciphertext, code_nonce, code_key_id, expires_at, voided_at
  FROM inventories WHERE allocation_id = $1 ORDER BY allocation_position";
