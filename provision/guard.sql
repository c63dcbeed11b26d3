-- Step "guard" of provision.sh: read-only checks before the job touches any role. Defence in depth behind
-- config validation, for a hand-edited config or a role changed by hand: the job never alters,
-- re-passwords or disables a role with superuser-level rights, never uses a reserved name, and never
-- hands the app a role that is (or is a member of) a powerful one.
-- Variables: su, active, idle, app_group.
\ir settings.sql
DO $guard$
DECLARE
  su text := current_setting('provision.su');
  names text[] := ARRAY[current_setting('provision.active'), current_setting('provision.idle'),
                        current_setting('provision.app_group')];
  r record;
BEGIN
  FOR r IN SELECT unnest(names) AS name LOOP
    IF r.name = su THEN
      RAISE EXCEPTION 'app role % is the configured superuser: dbAppUser and the roles derived from it must differ from dbSuperuser', r.name;
    END IF;
    IF r.name LIKE 'pg\_%' OR r.name IN ('public', 'none', 'all', 'current_user', 'session_user', 'current_role', 'user') THEN
      RAISE EXCEPTION 'role name % is reserved by PostgreSQL', r.name;
    END IF;
  END LOOP;
  FOR r IN
    SELECT ro.rolname FROM pg_roles ro
      LEFT JOIN pg_shdescription d ON d.objoid = ro.oid AND d.classoid = 'pg_authid'::regclass
     WHERE (ro.rolname = ANY (names) OR d.description LIKE 'stock-analyzer app %')
       AND ro.rolname <> su
       AND (ro.rolsuper OR ro.rolcreaterole OR ro.rolreplication OR ro.rolbypassrls)
  LOOP
    RAISE EXCEPTION 'refusing to alter role %: it has superuser-level rights (SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS) and the job manages ordinary roles only; remove them by hand (ALTER ROLE % NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS) or choose another dbAppUser', r.rolname, r.rolname;
  END LOOP;
  FOR r IN
    SELECT m.rolname AS member, p.rolname AS powerful FROM pg_roles m JOIN pg_roles p ON p.oid <> m.oid
     WHERE m.rolname = ANY (names)
       AND (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
            OR p.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files'))
       AND pg_has_role(m.oid, p.oid, 'MEMBER')
  LOOP
    RAISE EXCEPTION 'refusing to use role %: it is a member of %, which has superuser-level rights; revoke that membership by hand', r.member, r.powerful;
  END LOOP;
END
$guard$;
