-- Right after a base backup: the row counts and checksums of every table (checksums.sql) and a named restore
-- point, at one instant. SHARE locks (reads go on, writes wait) make the counted state exactly the state at
-- the restore point; the drill restores to that point and must find the same numbers. Run with
-- psql -X -A -t -F <TAB> -v ON_ERROR_STOP=1 -v point=NAME as the superuser.
\set QUIET on
SET client_min_messages = warning;
SET lock_timeout = '30s';
-- READ COMMITTED: each count sees every commit made before the locks were granted (a REPEATABLE READ
-- snapshot would be taken by the first statement, before them).
BEGIN;
SELECT format('LOCK TABLE %I.%I IN SHARE MODE', n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%' \gexec
\ir checksums.sql
SELECT '#point', pg_create_restore_point(:'point'), '';
COMMIT;
SELECT '#switch', pg_switch_wal(), '';
