-- Durable, ordered events. The relay gives each committed outbox row its place in the order
-- (`seq`) as it sees it commit, so the order is the commit order and never changes; the events
-- stream's entry ids and the events API both follow it. Publication is a watermark (every event
-- up to `published_seq` is in the stream) plus one row per appended batch, not a write per
-- event; published events are pruned after a retention. Backoff is the stream's, not a row's.

-- Events written before this migration keep their id order, and the publication times they had.
CREATE TABLE outbox_sequence (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The last place given to an event (it survives the pruning of the rows).
    last_seq      bigint NOT NULL CHECK (last_seq >= 0),
    -- Every event up to this place is in the stream, as far as the relay knows.
    published_seq bigint NOT NULL CHECK (published_seq >= 0),
    CONSTRAINT outbox_sequence_published_ordered CHECK (published_seq <= last_seq)
);

-- One row per batch appended to the stream: the events from the previous batch's end up to
-- `through_seq` were first appended at `at`.
CREATE TABLE outbox_publications (
    through_seq bigint PRIMARY KEY CHECK (through_seq > 0),
    at          timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE outbox ADD COLUMN seq bigint;
UPDATE outbox SET seq = id;

INSERT INTO outbox_sequence (last_seq, published_seq)
SELECT coalesce(max(id), 0),
       -- Up to the first event never published: the relay publishes the rest in order.
       coalesce((SELECT min(id) - 1 FROM outbox WHERE published_at IS NULL), max(id), 0)
  FROM outbox;

INSERT INTO outbox_publications (through_seq, at)
SELECT seq, published_at FROM outbox
 WHERE published_at IS NOT NULL AND seq <= (SELECT published_seq FROM outbox_sequence);

DROP INDEX outbox_unpublished;
ALTER TABLE outbox
    DROP COLUMN published_at,
    DROP COLUMN attempts,
    DROP COLUMN next_attempt_at,
    DROP COLUMN last_error;

-- Readers page by place; rows not placed yet are only in the second index (a new row, unplaced,
-- leaves no entry behind in the first when it gets its place).
CREATE UNIQUE INDEX outbox_seq ON outbox (seq) WHERE seq IS NOT NULL;
-- The rows the relay has not placed yet: few, and found without scanning the rest.
CREATE INDEX outbox_unordered ON outbox (id) WHERE seq IS NULL;

-- An event's place is given once: readers page by it and the stream's entry ids are made of it.
CREATE FUNCTION outbox_seq_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outbox row % already has its place % in the order', OLD.id, OLD.seq
        USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER outbox_seq_is_final
    BEFORE UPDATE OF seq ON outbox
    FOR EACH ROW WHEN (OLD.seq IS NOT NULL AND NEW.seq IS DISTINCT FROM OLD.seq)
    EXECUTE FUNCTION outbox_seq_is_final();
