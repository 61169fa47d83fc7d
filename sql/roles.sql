-- Least-privilege database role for outbox-relay.
--
-- Run it once, as an admin, connected to the database that holds the outbox
-- table (it is idempotent: running it again changes nothing, except that it
-- resets the role's password and its privileges on the outbox table to exactly
-- the ones below):
--
--   psql "postgres://admin@db.example.com/app" -v ON_ERROR_STOP=1 \
--        -v password="$OUTBOX_RELAY_DB_PASSWORD" -f sql/roles.sql
--
-- "Admin" is simplest a superuser. A non-superuser can run it only if it owns
-- the outbox table and has CREATE on the database (CREATE PUBLICATION needs
-- both), has CREATEROLE (and, from PostgreSQL 16 on, REPLICATION itself: only
-- a role with REPLICATION may give it to another), and may grant CONNECT on
-- the database and USAGE on the schema (e.g. as their owner).
--
-- psql variables (set any of them with -v name=value):
--   password     the new role's password (required; never stored in this file)
--   role         the login role the relay uses          default outbox_relay
--   schema       schema of the outbox table             default public
--   table        name of the outbox table               default outbox
--   publication  publication the relay streams from     default outbox_relay
-- (<schema>.<table> and publication must match OUTBOX_RELAY_TABLE and
-- OUTBOX_RELAY_PUBLICATION; role and password go into OUTBOX_RELAY_PG_URL.)
--
-- Who does what:
--
--   the outbox table   admin. The role gets no CREATE privilege, so
--                      `outbox-relay setup` run as this role cannot create it:
--                      create it first, either with your migrations (the DDL
--                      is in sql/outbox.sql) or by running `outbox-relay setup`
--                      once with an admin's PG_URL.
--   the publication    admin (this script). CREATE PUBLICATION ... FOR TABLE
--                      requires owning the table, which the relay must not.
--   the slot           the relay itself: `outbox-relay setup` (or `run`)
--                      creates the pgoutput slot over a replication
--                      connection, which only needs the REPLICATION attribute.
--
-- After this script, `outbox-relay setup` as this role prints
--   table ...: exists / publication ...: exists / slot ...: created at <LSN>
-- and `outbox-relay run` needs nothing more.
--
-- pg_hba.conf: the relay opens a *logical* replication connection
-- (replication=database). Such a connection is matched by the ordinary
-- database column (e.g. "host app outbox_relay 10.0.0.0/8 scram-sha-256"),
-- not by the "replication" keyword, which is only for physical replication.
--
-- PostgreSQL 14 and older let PUBLIC create objects in schema public; revoke
-- that (REVOKE CREATE ON SCHEMA public FROM PUBLIC) if the relay role must not.
--
-- Heartbeats (pg_logical_emit_message), the leader's advisory lock, reading
-- pg_replication_slots and terminating a stale walsender of the relay's own
-- slot (which runs as this same role) need no further grant.

\set ON_ERROR_STOP on

\if :{?role}
\else
  \set role outbox_relay
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?table}
\else
  \set table outbox
\endif
\if :{?publication}
\else
  \set publication outbox_relay
\endif
\if :{?password}
\else
  \echo 'roles.sql: set the role''s password: psql -v password=... -f sql/roles.sql'
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql: psql variable "password" is not set'; END $$;
\endif

-- The table must exist before it can be granted on or published.
SELECT format('%I.%I', :'schema', :'table') AS qualified,
       to_regclass(format('%I.%I', :'schema', :'table')) IS NOT NULL AS table_exists \gset
\if :table_exists
\else
  \echo 'roles.sql: table' :qualified 'does not exist: create it first (sql/outbox.sql, or `outbox-relay setup` run as an admin)'
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql: the outbox table does not exist'; END $$;
\endif

SELECT current_database() AS dbname,
       NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS create_role,
       NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') AS create_publication
\gset

-- 1. The login role. REPLICATION lets it open a replication connection, create
--    its logical slot and stream from it; it is *not* superuser-like: it gives
--    no access to any table. Everything else is switched off explicitly so a
--    re-run also removes attributes someone added by hand.
\if :create_role
  CREATE ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'password'
      NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\else
  ALTER ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'password'
      NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\endif

-- 2. Connecting to this database (PUBLIC usually has CONNECT already; this
--    keeps the relay working where an admin revoked it from PUBLIC).
GRANT CONNECT ON DATABASE :"dbname" TO :"role";

-- 3. Looking up objects in the outbox table's schema. USAGE only: no CREATE,
--    so the relay can create neither tables nor anything else there.
GRANT USAGE ON SCHEMA :"schema" TO :"role";

-- 4. The outbox table, and nothing else. Start from nothing so that re-running
--    the script converges on exactly these privileges (this also revokes any
--    column privileges granted earlier).
REVOKE ALL ON TABLE :"schema".:"table" FROM :"role";
--    SELECT: the table check at start (columns), the reconciler's sweep of
--            old unacked rows, and the WHERE id = ... of the acks below.
--    DELETE: OUTBOX_RELAY_ACK_MODE=delete (the default) removes a row once
--            Kafka acked it.
--    UPDATE (published_at) only: OUTBOX_RELAY_ACK_MODE=mark sets it, and
--            the reconciler's SELECT ... FOR UPDATE SKIP LOCKED needs UPDATE on
--            at least one column. No other column may be changed.
--    With ACK_MODE=none the relay never writes: DELETE and UPDATE may be
--    revoked again, at the cost of the reconciler.
GRANT SELECT, DELETE ON TABLE :"schema".:"table" TO :"role";
GRANT UPDATE (published_at) ON TABLE :"schema".:"table" TO :"role";

--    The dead-letter table next to it (<table>_dead_letter, sql/outbox.sql):
--    INSERT when a row whose dead-letter record is a stub is recorded,
--    SELECT and DELETE for `outbox-relay dlq ls` and `dlq replay`.
\set dead_letter_table :table _dead_letter
SELECT format('%I.%I', :'schema', :'table' || '_dead_letter') AS dead_letter_qualified,
       to_regclass(format('%I.%I', :'schema', :'table' || '_dead_letter')) IS NOT NULL AS dead_letter_exists \gset
\if :dead_letter_exists
  REVOKE ALL ON TABLE :"schema".:"dead_letter_table" FROM :"role";
  GRANT SELECT, INSERT, DELETE ON TABLE :"schema".:"dead_letter_table" TO :"role";
\else
  \echo 'roles.sql: dead-letter table' :dead_letter_qualified 'does not exist: create it (sql/outbox.sql) and re-run this script: `outbox-relay run` refuses to start without it'

\endif

-- 5. The publication: created here, owned by the admin. The relay only reads
--    it (over the replication connection), which needs no privilege on it.
--    `outbox-relay setup` run as this role cannot create it (it fails with
--    "permission denied for database" and prints the statement an admin must
--    run); it checks the existing one instead (inserts only, the outbox table
--    only).
\if :create_publication
  CREATE PUBLICATION :"publication" FOR TABLE :"schema".:"table" WITH (publish = 'insert');
\else
  \echo 'roles.sql: publication' :"publication" 'exists: left as it is'
\endif

-- What the role now has, for the log of whoever ran this.
SELECT r.rolname AS role, r.rolcanlogin AS login, r.rolreplication AS replication,
       r.rolsuper AS superuser, r.rolcreatedb AS createdb, r.rolcreaterole AS createrole
FROM pg_roles r WHERE r.rolname = :'role';
SELECT privilege_type, NULL::name AS column_name
FROM information_schema.role_table_grants
WHERE grantee = :'role' AND table_schema = :'schema' AND table_name = :'table'
UNION ALL
SELECT privilege_type, column_name
FROM information_schema.column_privileges
WHERE grantee = :'role' AND table_schema = :'schema' AND table_name = :'table'
  AND privilege_type = 'UPDATE'
ORDER BY 1, 2;
SELECT pubname AS publication, pubinsert, pubupdate, pubdelete, pubtruncate,
       pg_get_userbyid(pubowner) AS owner
FROM pg_publication WHERE pubname = :'publication';
