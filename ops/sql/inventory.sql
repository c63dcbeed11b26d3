-- What `adopt` and `upgrade` compare between the source and the copy, one line per object:
--   kind|name|value
-- tables: row count and a content checksum (over every row's text, see below); sequences:
-- their position; views, functions, indexes, constraints and triggers: present (their definitions'
-- text differs between majors, so only their presence is compared).
-- Run with psql -X -A -t -F '|' -q. The session settings make every row's text the same on both sides.
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 3;
SET bytea_output = 'hex';
SELECT 'sequence', schemaname || '.' || sequencename,
       coalesce(last_value::text, 'unused')
  FROM pg_sequences
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 2;
SELECT 'view', schemaname || '.' || viewname, 'present'
  FROM pg_views
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 2;
SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       'present'
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind IN ('f', 'p')
 ORDER BY 2;
SELECT 'index', schemaname || '.' || indexname, 'present'
  FROM pg_indexes
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 2;
SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname, 'present'
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 2;
SELECT 'trigger', n.nspname || '.' || c.relname || '.' || t.tgname, 'present'
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND n.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 2;
-- The checksum is a sum of 64-bit row hashes (the first 16 hex digits of md5 over the row's text): it
-- does not depend on row order, so it needs no sort of a million rows.
SELECT format('SELECT %L, %L, count(*) || '' rows, '' || coalesce(sum((''x'' || left(md5(t::text), 16))::bit(64)::bigint::numeric)::text, ''-'') FROM %I.%I t',
              'table', n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
 ORDER BY n.nspname, c.relname \gexec
