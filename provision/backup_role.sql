-- Step "roles" of provision.sh, after provision.sql: the login role of the scheduled backups. It reads every
-- table, view and sequence (pg_read_all_data) of the app's database, and nothing else: no writes, no other
-- database, no superuser-level right. The superuser's password never reaches the backup container.
-- Variables: backup, su.
SET client_min_messages = warning;
-- psql variables do not reach DO blocks: handed over as session settings.
SET provision.backup = :'backup';
SET provision.su = :'su';
DO $backup$
DECLARE
  name text := current_setting('provision.backup');
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = name
              AND (rolname = current_setting('provision.su') OR rolsuper OR rolcreaterole OR rolreplication
                   OR rolbypassrls)) THEN
    RAISE EXCEPTION 'refusing to manage role % as the backup role: it is the superuser or has superuser-level rights; choose another dbBackupUser', name;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
    EXECUTE format('CREATE ROLE %I LOGIN', name);
  END IF;
END
$backup$;
COMMENT ON ROLE :"backup" IS 'stock-analyzer backup login (managed by db-provision)';
ALTER ROLE :"backup" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT pg_read_all_data TO :"backup";
GRANT CONNECT ON DATABASE :"DBNAME" TO :"backup";
