"""psycopg2 server-side (named) cursors: DECLARE ... CURSOR WITHOUT HOLD
inside a transaction, fetched in chunks of itersize, scrollable ones too,
while other clients run transactions on pgtoken's other server
connections. A WITH HOLD cursor outlives its transaction, which
transaction pooling cannot give: pgtoken must refuse it with a clear error
and the connection must stay usable."""

import threading

import psycopg2
import psycopg2.errors

from compat_common import IDENT, Checker, clients, done, rounds

QUERY = (
    "select g, current_user::text,"
    " coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>')"
    " from generate_series(1, 1000) g"
)


def busy(client, stop, errors):
    """Short transactions of another client, to keep the pool busy."""
    try:
        chk = Checker(client)
        conn = psycopg2.connect(client["dsn"])
        i = 0
        while not stop.is_set():
            with conn.cursor() as cur:
                cur.execute(IDENT, (i,))
                chk.row(cur.fetchone(), i, "busy")
            conn.commit()
            i += 1
        conn.close()
    except Exception as e:
        errors.append("busy %s: %r" % (client["sub"], e))


def main():
    me, *others = clients()
    chk = Checker(me)
    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=busy, args=(c, stop, errors)) for c in others]
    for t in threads:
        t.start()
    try:
        conn = psycopg2.connect(me["dsn"])
        fetched = 0
        for r in range(rounds(6)):
            with conn.cursor(name="big_%d" % (r % 2)) as cur:
                cur.itersize = 50
                cur.execute(QUERY)
                n = 0
                for g, role, sub in cur:
                    n += 1
                    if g != n:
                        raise AssertionError("row %d came as %d" % (n, g))
                    chk.ident(role, sub, "named cursor")
                if n != 1000:
                    raise AssertionError("named cursor gave %d rows, want 1000" % n)
                fetched += n
            # Another transaction in between, with its own cursor.
            with conn.cursor() as cur:
                cur.execute(IDENT, (r,))
                chk.row(cur.fetchone(), r, "between cursors")
            conn.commit()

        # A scrollable cursor: move around in it.
        with conn.cursor(name="scroll", scrollable=True) as cur:
            cur.execute(QUERY)
            cur.scroll(500, mode="absolute")
            g, role, sub = cur.fetchone()
            chk.ident(role, sub, "scroll")
            cur.scroll(-100)
            g2 = cur.fetchone()[0]
            if (g, g2) != (501, 402):
                raise AssertionError("scrolled to %d then %d, want 501 then 402" % (g, g2))
        conn.commit()

        # WITH HOLD cannot work in transaction pooling: a clear refusal,
        # then the connection goes on after a rollback.
        refused = ""
        try:
            with conn.cursor(name="held", withhold=True) as cur:
                cur.execute(QUERY)
                cur.fetchone()
            conn.commit()
        except psycopg2.Error as e:
            refused = "%s %s" % (e.pgcode, e.pgerror)
            conn.rollback()
        with conn.cursor() as cur:
            cur.execute(IDENT, (7,))
            chk.row(cur.fetchone(), 7, "after WITH HOLD")
        conn.commit()
        conn.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise SystemExit("\n".join(errors))
    done({"fetched": fetched, "checked": chk.checked, "withhold": refused})


main()
