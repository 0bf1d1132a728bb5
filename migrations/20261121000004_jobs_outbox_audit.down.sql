DROP TABLE audit_log;
DROP TABLE job_runs;
DROP TABLE scheduled_jobs;
DROP TABLE outbox;
