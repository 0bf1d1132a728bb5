-- The Postgres session that runs a job, from its claim to its end. A `running` row whose
-- session has ended belongs to a process that died mid-run (kill -9, a lost host or connection),
-- and the next run of the job, holding the job's lock, closes it as failed.
ALTER TABLE job_runs ADD COLUMN backend_pid integer, ADD COLUMN backend_start timestamptz;

-- Every run looks for its job's unfinished runs: a handful of rows, not the job's whole history.
CREATE INDEX job_runs_running ON job_runs (job_name) WHERE outcome = 'running';
