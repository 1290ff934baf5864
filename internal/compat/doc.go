// Package compat is pgtoken's driver compatibility suite: real client
// drivers and tools (pgx in every query exec mode, database/sql, pgbench,
// psql, psycopg2, node-postgres) pointed at pgtoken with a token as the
// password and nothing else changed, against a real Postgres, with more
// clients than server connections. It holds tests only; the scripts the
// tests run are under testdata/compat.
package compat
