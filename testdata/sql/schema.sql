-- pgtoken demo and test schema.
--
-- Run as a superuser on a fresh database (normally "app"). Plain SQL: works
-- with psql, with docker's /docker-entrypoint-initdb.d, and as one
-- multi-statement simple-protocol query. Database-level statements use
-- current_database(), and roles are created only when missing, so the file
-- can be applied to several databases of one cluster, and re-applied.
--
-- Model: pgtoken logs in as "authenticator" and runs each transaction as
--   SET LOCAL ROLE <role from token>; SET LOCAL jwt.claims.<name> = <value>;
-- so the token roles below and row-level security decide what a client sees.
--
-- The database is locked down as docs/SECURITY.md says (pgtoken checks it
-- and refuses a role that fails): authenticator NOINHERIT with no privileges
-- of its own, nobody with TEMPORARY or CREATE.

-- Hash passwords set below with SCRAM whatever the server default.
SET password_encryption = 'scram-sha-256';

-- Roles. authenticator may log in but has no privileges of its own
-- (NOINHERIT: it gets the token roles' rights only after SET ROLE). The token
-- roles cannot log in. nopriv is deliberately not granted to authenticator,
-- so SET ROLE nopriv must fail.
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['authenticator', 'web_anon', 'web_user', 'web_admin', 'nopriv'] LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I', r);
    END IF;
  END LOOP;
END
$$;
ALTER ROLE authenticator LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD 'secret';
ALTER ROLE web_anon  NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE web_user  NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE web_admin NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE nopriv    NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT web_anon, web_user, web_admin TO authenticator;

-- Database: nobody but authenticator may connect, and nobody (superusers
-- aside) may create schemas or temporary tables. search_path is set per
-- database because role defaults do not apply under SET ROLE.
DO $$
BEGIN
  EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO authenticator', current_database());
  EXECUTE format('ALTER DATABASE %I SET search_path = api, public', current_database());
END
$$;

-- Schema public: no CREATE for anyone (already the default since PostgreSQL 15).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Schema api: usable by the token roles only.
CREATE SCHEMA IF NOT EXISTS api;
REVOKE ALL ON SCHEMA api FROM PUBLIC;
GRANT USAGE ON SCHEMA api TO web_anon, web_user, web_admin;

-- api.todos: per-user rows under forced row-level security. owner defaults
-- to the token's sub claim.
CREATE TABLE IF NOT EXISTS api.todos (
  id    bigserial PRIMARY KEY,
  owner text NOT NULL DEFAULT nullif(current_setting('jwt.claims.sub', true), ''),
  title text NOT NULL,
  done  boolean DEFAULT false
);
ALTER TABLE api.todos ENABLE ROW LEVEL SECURITY;
ALTER TABLE api.todos FORCE ROW LEVEL SECURITY;

-- Policies: web_user reads and writes only its own rows; web_admin all rows;
-- web_anon has no policy and so sees no rows at all.
DROP POLICY IF EXISTS todos_own ON api.todos;
CREATE POLICY todos_own ON api.todos FOR ALL TO web_user
  USING (owner = nullif(current_setting('jwt.claims.sub', true), ''))
  WITH CHECK (owner = nullif(current_setting('jwt.claims.sub', true), ''));
DROP POLICY IF EXISTS todos_admin ON api.todos;
CREATE POLICY todos_admin ON api.todos FOR ALL TO web_admin
  USING (true)
  WITH CHECK (true);

-- Table grants; web_anon may query (and gets zero rows).
REVOKE ALL ON api.todos FROM PUBLIC;
GRANT SELECT ON api.todos TO web_anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON api.todos TO web_user, web_admin;
GRANT USAGE, SELECT ON SEQUENCE api.todos_id_seq TO web_user, web_admin;

-- Seed: three rows per owner; every title starts with its owner's name.
INSERT INTO api.todos (owner, title, done)
SELECT v.owner, v.title, v.done
FROM (VALUES
  ('alice', 'alice: water the ferns',          false),
  ('alice', 'alice: renew the passport',       true),
  ('alice', 'alice: call the plumber',         false),
  ('bob',   'bob: fix the bike chain',         false),
  ('bob',   'bob: return library books',       true),
  ('bob',   'bob: book the dentist',           false),
  ('carol', 'carol: file the tax return',      false),
  ('carol', 'carol: repaint the fence',        false),
  ('carol', 'carol: plan the birthday party',  true)
) AS v(owner, title, done)
WHERE NOT EXISTS (SELECT FROM api.todos);

-- api.notes: no row-level security (COPY FROM refuses tables with RLS), for
-- COPY tests. owner defaults to the token's sub claim.
CREATE TABLE IF NOT EXISTS api.notes (
  id    bigserial PRIMARY KEY,
  owner text DEFAULT nullif(current_setting('jwt.claims.sub', true), ''),
  body  text
);
REVOKE ALL ON api.notes FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON api.notes TO web_user;
GRANT USAGE, SELECT ON SEQUENCE api.notes_id_seq TO web_user;

-- api.whoami(): who the current transaction runs as, and its claims as the
-- proxy set them (claims is the JSON text of request.jwt.claims, if set).
CREATE OR REPLACE FUNCTION api.whoami()
RETURNS TABLE (role text, sub text, claims text)
LANGUAGE sql STABLE SECURITY INVOKER
AS $$
  SELECT current_user::text,
         nullif(current_setting('jwt.claims.sub', true), ''),
         nullif(current_setting('request.jwt.claims', true), '')
$$;

-- api.claim(name): one claim set by the proxy, or NULL.
CREATE OR REPLACE FUNCTION api.claim(name text)
RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER
AS $$
  SELECT nullif(current_setting('jwt.claims.' || $1, true), '')
$$;

-- api.commit_inside(): a procedure that commits in the middle and then
-- reports who it runs as. A CALL outside a transaction block may commit;
-- what follows the COMMIT runs in a new transaction, which the proxy must
-- give the caller's identity too (tests of procedures that commit).
CREATE OR REPLACE PROCEDURE api.commit_inside(INOUT role text DEFAULT NULL, INOUT sub text DEFAULT NULL)
LANGUAGE plpgsql SECURITY INVOKER
AS $$
BEGIN
  COMMIT;
  role := current_user;
  sub := nullif(current_setting('jwt.claims.sub', true), '');
END
$$;

-- Functions are executable by PUBLIC by default; restrict to the token roles.
REVOKE ALL ON FUNCTION api.whoami(), api.claim(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.whoami(), api.claim(text) TO web_anon, web_user, web_admin;
REVOKE ALL ON PROCEDURE api.commit_inside(text, text) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE api.commit_inside(text, text) TO web_anon, web_user, web_admin;
