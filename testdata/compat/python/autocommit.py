"""psycopg2 autocommit on and off, session-level SETs in each, set_session
(which psycopg2 turns into BEGIN options, or into session-level SETs in
autocommit), the connection context manager, and startup parameters
(application_name, options). Every transaction runs as the token and sees
the client's settings."""

import psycopg2

from compat_common import IDENT, Checker, clients, done, rounds

SETTINGS = (
    "select current_setting('statement_timeout'), current_setting('application_name'),"
    " current_setting('TimeZone'), current_setting('transaction_isolation'),"
    " current_setting('transaction_read_only')"
)


def settings(conn):
    with conn.cursor() as cur:
        cur.execute(SETTINGS)
        return list(cur.fetchone())


def expect(what, got, want):
    if got != want:
        raise AssertionError("%s: %r, want %r" % (what, got, want))


def main():
    me = clients()[0]
    chk = Checker(me)
    conn = psycopg2.connect(me["dsn"], application_name="compat-py", options="-c timezone=Europe/Paris")

    # Autocommit: each statement its own transaction.
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("set statement_timeout = '4321ms'")
        for i in range(rounds(20)):
            cur.execute(IDENT, (i,))
            chk.row(cur.fetchone(), i, "autocommit")
    expect("autocommit", settings(conn), ["4321ms", "compat-py", "Europe/Paris", "read committed", "off"])

    # set_session in autocommit: psycopg2 sets the session defaults.
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    for _ in range(3):
        expect("set_session in autocommit", settings(conn),
               ["4321ms", "compat-py", "Europe/Paris", "repeatable read", "on"])
    conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT")

    # Not autocommit: SET in a committed transaction sticks, in a rolled
    # back one it does not.
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("set statement_timeout = '5432ms'")
        cur.execute(IDENT, (1,))
        chk.row(cur.fetchone(), 1, "transaction")
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("set statement_timeout = '6543ms'")
    conn.rollback()
    expect("after commit and rollback", settings(conn), ["5432ms", "compat-py", "Europe/Paris", "read committed", "off"])
    conn.commit()

    # set_session outside autocommit: BEGIN ISOLATION LEVEL ... READ ONLY.
    conn.set_session(isolation_level="SERIALIZABLE", readonly=True)
    for i in range(3):
        expect("set_session", settings(conn), ["5432ms", "compat-py", "Europe/Paris", "serializable", "on"])
        with conn.cursor() as cur:
            cur.execute(IDENT, (i,))
            chk.row(cur.fetchone(), i, "serializable read only")
        conn.commit()
    conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT")

    # The context manager commits on success, rolls back on an exception.
    with conn:
        with conn.cursor() as cur:
            cur.execute("insert into api.notes (body) values ('kept') returning owner")
            chk.ident(me["role"], cur.fetchone()[0], "context manager")
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("insert into api.notes (body) values ('undone')")
                cur.execute("select 1/0")
    except psycopg2.errors.DivisionByZero:
        pass
    with conn:
        with conn.cursor() as cur:
            cur.execute("select count(*) filter (where body = 'kept'), count(*) filter (where body = 'undone') from api.notes")
            kept, undone = cur.fetchone()
    expect("notes kept, undone", (kept, undone), (1, 0))

    # The statement timeout is in force.
    conn.autocommit = True
    timed_out = False
    with conn.cursor() as cur:
        cur.execute("set statement_timeout = '150ms'")
        try:
            cur.execute("select pg_sleep(2)")
        except psycopg2.errors.QueryCanceled:
            timed_out = True
        cur.execute(IDENT, (2,))
        chk.row(cur.fetchone(), 2, "after the timeout")
    conn.close()
    done({"checked": chk.checked, "timed_out": timed_out})


main()
