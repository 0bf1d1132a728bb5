-- Background work: the transactional outbox, job schedules and their history, and the audit log.

CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text NOT NULL CHECK (topic ~ '^[a-z][a-z0-9_.]{0,63}$'),
    aggregate_id    text NOT NULL,
    payload         jsonb NOT NULL,
    -- W3C traceparent of the request that wrote the event, so the relay joins its trace.
    trace_context   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE scheduled_jobs (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,63}$'),
    enabled       boolean NOT NULL DEFAULT true,
    -- Overrides the schedule in code when set.
    interval_secs integer CHECK (interval_secs IS NULL OR interval_secs > 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text
);

CREATE TABLE job_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name    text NOT NULL,
    instance    text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- The schedule slot (tick) a scheduled run belongs to; NULL for runs started by hand.
    slot        timestamptz,
    outcome     text NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'skipped')),
    counts      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error       text,
    CONSTRAINT job_runs_finished CHECK ((outcome = 'running') = (finished_at IS NULL)),
    -- Each tick of a job is claimed once, whichever process gets there first.
    CONSTRAINT job_runs_one_per_slot UNIQUE (job_name, slot)
);

CREATE INDEX job_runs_job_started ON job_runs (job_name, started_at DESC);

CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    subject  text NOT NULL,
    details  jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_at ON audit_log (at);
