#!/bin/sh
# Postgres first-start initialisation for `docker compose up` (run once by the
# postgres image, as its superuser, from /docker-entrypoint-initdb.d): the
# admin's part of sql/roles.sql. It creates the outbox and dead-letter tables (sql/outbox.sql),
# the least-privilege role the relay connects as and the publication, so the
# relay itself never runs as the superuser.
#
# SQL_DIR (default /sql, the compose mount of ./sql) lets the test suite run
# this very script against its own Postgres.
set -eu
sql_dir=${SQL_DIR:-/sql}
sed -e 's/{{TABLE}}/public.outbox/g' -e 's/{{INDEX}}/outbox_unacked_idx/g' \
	-e 's/{{DEAD_LETTER_TABLE}}/public.outbox_dead_letter/g' -e 's/{{DEAD_LETTER_INDEX}}/outbox_dead_letter_id_idx/g' \
	-e 's/{{ID}}/id/g' "$sql_dir/outbox.sql" |
	psql -X -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB"
psql -X -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v role=outbox_relay -v password="$OUTBOX_RELAY_DB_PASSWORD" -f "$sql_dir/roles.sql"
