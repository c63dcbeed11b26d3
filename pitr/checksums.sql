-- Per-table row count and an order-independent checksum of every row of every table of the current
-- database, one `schema.table<TAB>rows<TAB>checksum` line each (psql -X -A -t -F <TAB>). A drill compares a
-- restored cluster with what `mark.sql` recorded when the backup was taken.
SET client_min_messages = warning;
SELECT format('SELECT %L, count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM %I.%I t',
              n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
 ORDER BY n.nspname, c.relname \gexec
