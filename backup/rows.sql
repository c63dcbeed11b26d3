-- `backup.sh rows`: exact row counts of every table of the live database, one `schema.table<TAB>rows` line
-- each; restore names what it is about to replace. Run with psql -X -A -t -F <TAB>.
SET client_min_messages = warning;
SELECT format('SELECT %L, count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
 ORDER BY n.nspname, c.relname \gexec
