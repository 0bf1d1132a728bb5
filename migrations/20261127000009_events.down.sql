DROP TRIGGER outbox_seq_is_final ON outbox;
DROP FUNCTION outbox_seq_is_final();
DROP INDEX outbox_unordered;
DROP INDEX outbox_seq;

ALTER TABLE outbox
    ADD COLUMN published_at timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error text;

-- An event in the stream keeps the time its batch was first appended.
UPDATE outbox o
   SET published_at = coalesce(
           (SELECT p.at FROM outbox_publications p WHERE p.through_seq >= o.seq ORDER BY p.through_seq LIMIT 1),
           now())
 WHERE o.seq <= (SELECT published_seq FROM outbox_sequence);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
ALTER TABLE outbox DROP COLUMN seq;
DROP TABLE outbox_publications;
DROP TABLE outbox_sequence;
