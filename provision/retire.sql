-- Step "disable" of provision.sh, after the app has moved to the active role and the others have drained:
-- every managed role but the active login and its group loses its login and password. Roles no longer
-- configured (left from a renamed dbAppUser) also lose memberships and grants, and are dropped when
-- nothing else depends on them. A role with superuser-level rights is never touched.
-- Variables: su, active, idle, app_group.
\ir settings.sql
DO $retire$
DECLARE
  su text := current_setting('provision.su');
  idle text := current_setting('provision.idle');
  r record;
  m record;
BEGIN
  FOR r IN
    SELECT ro.oid, ro.rolname, ro.rolsuper OR ro.rolcreaterole OR ro.rolreplication OR ro.rolbypassrls AS powerful
      FROM pg_roles ro JOIN pg_shdescription d ON d.objoid = ro.oid AND d.classoid = 'pg_authid'::regclass
     WHERE d.description LIKE 'stock-analyzer app %'
       AND ro.rolname NOT IN (current_setting('provision.active'), current_setting('provision.app_group'))
     ORDER BY ro.rolname
  LOOP
    IF r.powerful OR r.rolname = su THEN
      RAISE EXCEPTION 'refusing to disable role %: it is the superuser or has superuser-level rights', r.rolname;
    END IF;
    EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL', r.rolname);
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usesysid = r.oid;
    CONTINUE WHEN r.rolname = idle;
    FOR m IN
      SELECT g.rolname AS grp, u.rolname AS member
        FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles u ON u.oid = am.member
       WHERE am.member = r.oid OR am.roleid = r.oid
    LOOP
      EXECUTE format('REVOKE %I FROM %I', m.grp, m.member);
    END LOOP;
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', r.rolname);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %I', r.rolname);
    EXECUTE format('REVOKE ALL ON SCHEMA public FROM %I', r.rolname);
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', current_database(), r.rolname);
    BEGIN
      EXECUTE format('DROP ROLE %I', r.rolname);
      RAISE NOTICE 'retired role % (dropped)', r.rolname;
    EXCEPTION WHEN dependent_objects_still_exist THEN
      RAISE NOTICE 'retired role % (kept without login or grants: other objects depend on it)', r.rolname;
    END;
  END LOOP;
END
$retire$;
