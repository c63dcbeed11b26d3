-- The app's privilege model on its schemas, applied by the provisioning job (step "roles", included by
-- provision.sql) and by every restore, inside its transaction (backup/backup.sh): the archive's own grants
-- are never restored (--no-acl), and re-created functions would otherwise be callable by PUBLIC again.
-- Names are schema-qualified: a restore runs with search_path ''.
-- Variables: app_group; schemas, a comma-separated list of the app's schemas, or empty for every schema
-- that holds a table (an adopted legacy database may use more than public).
--
-- Functions: none for PUBLIC in any schema, now or later (the superuser's default privileges).
SELECT format('REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA %I FROM PUBLIC', n.nspname)
  FROM pg_catalog.pg_namespace n
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
 ORDER BY 1 \gexec
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
-- In each of the app's schemas the app's group reads and writes rows (owns nothing, creates nothing), uses
-- the sequences, and calls the functions that run with its own rights. A SECURITY DEFINER function runs
-- with its owner's (the superuser's) rights: it is never opened to the app here; grant one by hand after
-- reviewing it.
WITH app_schema AS (
  SELECT n.oid, n.nspname
    FROM pg_catalog.pg_namespace n
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
     AND CASE WHEN :'schemas' = ''
              THEN n.nspname = 'public' OR EXISTS (SELECT FROM pg_catalog.pg_class c
                                                    WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p'))
              ELSE n.nspname = ANY (pg_catalog.string_to_array(:'schemas', ','))
         END
)
SELECT stmt FROM (
  SELECT s.nspname, 1 AS o, v.stmt
    FROM app_schema s, LATERAL (VALUES
      (format('GRANT USAGE ON SCHEMA %I TO %I', s.nspname, :'app_group')),
      (format('GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %I TO %I', s.nspname, :'app_group')),
      (format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', s.nspname, :'app_group'))) AS v(stmt)
  UNION ALL
  SELECT s.nspname, 2, format('GRANT EXECUTE ON %s %s TO %I',
                              CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                              p.oid::pg_catalog.regprocedure, :'app_group')
    FROM app_schema s JOIN pg_catalog.pg_proc p ON p.pronamespace = s.oid
   WHERE p.prokind IN ('f', 'p') AND NOT p.prosecdef
) AS g
ORDER BY g.nspname, g.o, g.stmt \gexec
