"""Helpers shared by the psycopg2 compatibility scripts.

The Go test (internal/compat/psycopg_test.go) passes the clients to use in
COMPAT_CLIENTS, a JSON list of {"dsn", "role", "sub"}: each dsn logs in to
pgtoken with a token for that role and sub as the password. Scripts raise
on any failure and print one JSON object with what they saw on success.
"""

import json
import os
import sys

# Who runs this statement: role, sub claim ("<none>" when unset), and the
# parameter back.
IDENT = (
    "select current_user::text,"
    " coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>'),"
    " %s::int"
)


def clients():
    return json.loads(os.environ["COMPAT_CLIENTS"])


def rounds(default):
    return int(os.environ.get("COMPAT_ROUNDS", default))


class Checker:
    """Checks that every statement ran as the client's role and sub."""

    def __init__(self, client):
        self.want = (client["role"], client["sub"])
        self.checked = 0

    def ident(self, role, sub, where=""):
        self.checked += 1
        if (role, sub) != self.want:
            raise AssertionError(
                "%s: statement ran as %s/%s, want %s/%s" % ((where, role, sub) + self.want)
            )

    def row(self, row, i, where=""):
        role, sub, n = row
        self.ident(role, sub, where)
        if n != i:
            raise AssertionError("%s: parameter %d came back as %d" % (where, i, n))


def done(result):
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
