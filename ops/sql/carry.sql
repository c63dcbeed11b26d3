-- What `upgrade` would not carry to the new major: it copies the stack's database alone, and the
-- provisioning job recreates the stack's own roles. One line per object it refuses to leave behind:
-- other databases, roles the stack does not manage, and per-role or per-database settings.
-- Variables: db (the stack's database), su (its superuser). Run with psql -X -A -t -q.
SET client_min_messages = warning;
SELECT 'database ' || datname
  FROM pg_database WHERE datname NOT IN (:'db', 'postgres', 'template0', 'template1')
UNION ALL
SELECT 'role ' || r.rolname
  FROM pg_roles r
  LEFT JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass
 WHERE r.rolname NOT LIKE 'pg\_%' AND r.rolname <> :'su'
   AND coalesce(d.description, '') NOT LIKE 'stock-analyzer %'
UNION ALL
SELECT 'setting of ' || coalesce(r.rolname, 'every role') || ' in ' || coalesce(d.datname, 'every database')
       || ': ' || array_to_string(s.setconfig, ', ')
  FROM pg_db_role_setting s
  LEFT JOIN pg_roles r ON r.oid = s.setrole
  LEFT JOIN pg_database d ON d.oid = s.setdatabase
ORDER BY 1;
