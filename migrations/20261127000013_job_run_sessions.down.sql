DROP INDEX job_runs_running;
ALTER TABLE job_runs DROP COLUMN backend_pid, DROP COLUMN backend_start;
