-- Run by patroni/post-init.sh (psql -v rewind=ROLE), once, on the first leader.
-- pg_rewind logs in to the leader's `postgres` database, whose CONNECT the provisioning job takes from PUBLIC
-- (provision/provision.sql): without this grant an old leader never rejoins. Patroni creates its rewind role
-- only after post_init; it then sets the password and the function grants on the role made here.
SELECT format('CREATE ROLE %I LOGIN', :'rewind')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'rewind') \gexec
GRANT CONNECT ON DATABASE postgres TO :"rewind";
