-- Included (\ir) by guard.sql and retire.sql: psql variables do not reach DO blocks, so they are handed
-- over as session settings. Variables: su, active, idle, app_group.
SET provision.su = :'su';
SET provision.active = :'active';
SET provision.idle = :'idle';
SET provision.app_group = :'app_group';
