-- The app's privilege model on the application schema, applied by the provisioning job (step "roles",
-- included by provision.sql) and by every restore, inside its transaction (backup/backup.sh): the archive's
-- own grants are never restored (--no-acl), and re-created functions would otherwise be callable by
-- PUBLIC again. Names are schema-qualified: a restore runs with search_path ''. Variables: app_group.
--
-- Tables and sequences: the app's group reads and writes rows (owns nothing, creates nothing).
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO :"app_group";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_group";
-- Functions: none for PUBLIC, now or later (the superuser's default privileges); the app's group may call
-- those that run with its own rights. A SECURITY DEFINER function runs with its owner's (the superuser's)
-- rights: it is never opened to the app here; grant one by hand after reviewing it.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
SELECT format('GRANT EXECUTE ON %s %s TO %I', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
              p.oid::pg_catalog.regprocedure, :'app_group')
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'public' AND p.prokind IN ('f', 'p') AND NOT p.prosecdef
 ORDER BY 1 \gexec
