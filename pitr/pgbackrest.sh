#!/bin/sh
# pgBackRest with the stack's secrets, read from their files into this one process's environment (never
# the container's): the off-host repository's cipher key and, for S3, its access keys (for SFTP, the path of
# the login key's file). Used for every
# pgBackRest call, archive_command and restore_command included (pgBackRest's `cmd` option points here).
set -eu
secrets="${PITR_SECRETS_DIR:-/run/secrets}"
case " ${PITR_REPOS:-1} " in
  *" 2 "*)
    PGBACKREST_REPO2_CIPHER_PASS=$(cat "$secrets/pitr_cipher_key")
    export PGBACKREST_REPO2_CIPHER_PASS
    if [ -r "$secrets/pitr_s3_key" ]; then
      PGBACKREST_REPO2_S3_KEY=$(cat "$secrets/pitr_s3_key")
      PGBACKREST_REPO2_S3_KEY_SECRET=$(cat "$secrets/pitr_s3_key_secret")
      export PGBACKREST_REPO2_S3_KEY PGBACKREST_REPO2_S3_KEY_SECRET
    fi
    if [ -r "$secrets/pitr_sftp_key" ]; then
      PGBACKREST_REPO2_SFTP_PRIVATE_KEY_FILE="$secrets/pitr_sftp_key"
      export PGBACKREST_REPO2_SFTP_PRIVATE_KEY_FILE
    fi
    ;;
esac
# As an environment option: restore_command, which pgBackRest writes itself, already names --config.
PGBACKREST_CONFIG="${PITR_CONF:-/etc/pgbackrest/pgbackrest.conf}"
export PGBACKREST_CONFIG
exec pgbackrest "$@"
