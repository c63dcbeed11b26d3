-- What an adopted database holds that runs with the superuser's rights, for a person to review before the
-- stack goes live: SECURITY DEFINER functions (never executable by the app: provision/privileges.sql) and
-- views owned by a superuser (the app reads through them with their owner's rights on the tables they name).
-- Run with psql -X -A -t -q.
SET client_min_messages = warning;
SELECT 'SECURITY DEFINER function ' || n.nspname || '.' || p.proname || '('
       || pg_get_function_identity_arguments(p.oid) || ') runs as ' || pg_get_userbyid(p.proowner)
       || '; the app may not call it until you grant it'
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'view ' || v.schemaname || '.' || v.viewname || ' is owned by superuser ' || v.viewowner
       || ': the app reads through it with that role''s rights'
  FROM pg_views v JOIN pg_roles r ON r.rolname = v.viewowner
 WHERE r.rolsuper AND v.schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1;
