-- Webhooks: endpoints per client (a sealed signing secret, the topics they want), one delivery
-- per event and endpoint, queued in event order by the outbox relay as it publishes, and every
-- attempt logged.

CREATE TABLE webhook_endpoints (
    id                         uuid PRIMARY KEY,
    client_id                  uuid NOT NULL REFERENCES clients (id),
    url                        text NOT NULL CHECK (length(url) BETWEEN 10 AND 2000),
    topics                     text[] NOT NULL CHECK (cardinality(topics) BETWEEN 1 AND 16),
    -- The signing secret, sealed with the card key ring (AES-256-GCM, bound to the endpoint).
    secret_ciphertext          bytea NOT NULL,
    secret_nonce               bytea NOT NULL CHECK (octet_length(secret_nonce) = 12),
    secret_key_id              text NOT NULL,
    -- After a rotation the old secret also signs, until it expires.
    previous_secret_ciphertext bytea,
    previous_secret_nonce      bytea CHECK (octet_length(previous_secret_nonce) = 12),
    previous_secret_key_id     text,
    previous_secret_expires_at timestamptz,
    state                      text NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'disabled')),
    disabled_reason            text CHECK (length(disabled_reason) <= 1000),
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    -- The delivery stream: since when its head fails, how often, when it is tried next, and the
    -- lease of the process delivering it now (its token guards every write of the holder).
    failing_since              timestamptz,
    failures                   integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    retry_at                   timestamptz,
    lease_token                uuid,
    leased_until               timestamptz,
    CONSTRAINT webhook_endpoints_previous_secret_whole CHECK (
        (previous_secret_ciphertext IS NULL) = (previous_secret_nonce IS NULL)
        AND (previous_secret_ciphertext IS NULL) = (previous_secret_key_id IS NULL)
        AND (previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL)
    ),
    CONSTRAINT webhook_endpoints_lease_whole CHECK ((lease_token IS NULL) = (leased_until IS NULL)),
    CONSTRAINT webhook_endpoints_disabled_has_reason CHECK ((state = 'disabled') = (disabled_reason IS NOT NULL))
);

CREATE INDEX webhook_endpoints_client ON webhook_endpoints (client_id, created_at);

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The outbox event; null for a test event.
    event_id        bigint,
    -- A delivery sent again by hand: the one it repeats (same message id).
    redelivery_of   bigint REFERENCES webhook_deliveries (id) ON DELETE SET NULL,
    -- `webhook-id`: the same on every attempt and every redelivery, for receivers to dedupe.
    message_id      text NOT NULL CHECK (length(message_id) BETWEEN 1 AND 100),
    topic           text NOT NULL,
    -- The body, exactly as signed and sent.
    body            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'abandoned')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_attempt_at timestamptz,
    last_status     integer,
    last_latency_ms integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT webhook_deliveries_finished CHECK ((state = 'pending') = (finished_at IS NULL))
);

-- Each event reaches each endpoint once (redeliveries by hand aside).
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (endpoint_id, event_id)
    WHERE event_id IS NOT NULL AND redelivery_of IS NULL;
-- An endpoint's queue, head first.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, id) WHERE state = 'pending';
-- An endpoint's log, newest first.
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    status      integer,
    latency_ms  integer NOT NULL CHECK (latency_ms >= 0),
    error       text CHECK (length(error) <= 1000)
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
