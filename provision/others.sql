-- Step "drain" of provision.sh: the managed login roles, other than the active one, that can still log in
-- (the app may be on one of them). Variables: active.
SELECT r.rolname
  FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass
 WHERE d.description LIKE 'stock-analyzer app login %' AND r.rolname <> :'active' AND r.rolcanlogin
 ORDER BY 1;
