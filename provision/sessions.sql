-- Step "drain" of provision.sh: open sessions of managed roles other than the active one.
-- Variables: active.
SELECT count(*)
  FROM pg_stat_activity a JOIN pg_shdescription d ON d.objoid = a.usesysid AND d.classoid = 'pg_authid'::regclass
 WHERE d.description LIKE 'stock-analyzer app %' AND a.usename <> :'active';
