-- Step "roles" of provision.sh: the app's roles, grants and schema. Idempotent. Passwords are not set
-- here: provision.sh sends a SCRAM verifier with \password.
-- Variables: su, active, idle, app_group, previous (the role the app's credential file names now).
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I NOLOGIN', r) FROM (VALUES (:'app_group'), (:'active'), (:'idle')) AS v(r)
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
-- The tag by which later runs find every role this job manages (and retire those no longer configured).
COMMENT ON ROLE :"app_group" IS 'stock-analyzer app group (managed by db-provision)';
COMMENT ON ROLE :"active" IS 'stock-analyzer app login (managed by db-provision)';
COMMENT ON ROLE :"idle" IS 'stock-analyzer app login (managed by db-provision)';
-- Roles an older job version created without the tag and that dbAppUser no longer names (a rename):
-- the pair and group of the role the app is on now, tagged so that the "disable" step retires them.
WITH prev AS (
  SELECT :'previous'::text AS u WHERE :'previous' NOT IN ('', :'active', :'idle')
), base AS (
  SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = u || '_rw') THEN u
              WHEN u LIKE '%\_b' AND EXISTS (SELECT FROM pg_roles WHERE rolname = left(u, -2) || '_rw') THEN left(u, -2)
         END AS b
    FROM prev
)
SELECT format('COMMENT ON ROLE %I IS %L', r.rolname,
              CASE WHEN r.rolname = b || '_rw' THEN 'stock-analyzer app group (managed by db-provision)'
                   ELSE 'stock-analyzer app login (managed by db-provision)' END)
  FROM base JOIN pg_roles r ON r.rolname IN (b, b || '_b', b || '_rw')
 WHERE NOT (r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls)
   AND r.rolname NOT IN (:'su', :'active', :'idle', :'app_group') \gexec
ALTER ROLE :"app_group" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE :"active" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT :"app_group" TO :"active";
GRANT :"app_group" TO :"idle";
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"app_group";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_group";
CREATE TABLE IF NOT EXISTS stock_prices (
    id bigserial PRIMARY KEY,
    symbol text NOT NULL CHECK (symbol ~ '^[A-Z0-9.]{1,12}$'),
    day date NOT NULL,
    close numeric(14, 4) NOT NULL CHECK (close >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (symbol, day)
);
-- The app's group connects to the app's database only: not to the maintenance database or the template.
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
-- Every table and sequence of the app's schema, stock_prices and whatever an adopted legacy database
-- brought (owned by the superuser, used by the app through its group; never owned by the app), and the
-- functions it may call: the one privilege model that every restore applies again.
\ir privileges.sql
