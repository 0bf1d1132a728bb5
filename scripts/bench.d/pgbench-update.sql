-- (a) One-row UPDATE of a random account, one transaction each. pgbench -D accounts=N.
\set aid random(1, :accounts)
UPDATE bench_accounts SET balance = balance + 1 WHERE id = :aid;
