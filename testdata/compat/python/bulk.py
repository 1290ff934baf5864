"""psycopg2 executemany, execute_values, copy_expert in both directions
(COPY ... FROM STDIN into api.notes, whose owner defaults to the sub claim;
COPY ... TO STDOUT from api.todos under row-level security), and a
COPY FROM STDIN whose file object fails mid-way (libpq ends the copy with
CopyFail): the connection goes on."""

import io

import psycopg2
import psycopg2.extras

from compat_common import IDENT, Checker, clients, done


class Broken(io.RawIOBase):
    """A file that gives some rows, then fails."""

    def __init__(self):
        self.sent = False

    def readable(self):
        return True

    def read(self, size=-1):
        if not self.sent:
            self.sent = True
            return b"".join(b"broken %d\n" % i for i in range(100))
        raise OSError("the file broke")


def main():
    me = clients()[0]
    chk = Checker(me)
    conn = psycopg2.connect(me["dsn"])
    with conn.cursor() as cur:
        cur.executemany("insert into api.notes (body) values (%s)", [("many %d" % i,) for i in range(200)])
        psycopg2.extras.execute_values(
            cur, "insert into api.notes (body) values %s", [("values %d" % i,) for i in range(300)], page_size=100
        )
    conn.commit()

    data = "".join("copied %d\n" % i for i in range(500))
    with conn.cursor() as cur:
        cur.copy_expert("copy api.notes (body) from stdin", io.StringIO(data))
    conn.commit()

    out = io.StringIO()
    with conn.cursor() as cur:
        cur.copy_expert("copy (select owner, title from api.todos order by id) to stdout", out)
    conn.commit()
    lines = out.getvalue().splitlines()

    failed = ""
    try:
        with conn.cursor() as cur:
            cur.copy_expert("copy api.notes (body) from stdin", Broken())
        conn.commit()
    except Exception as e:
        failed = repr(e)
        conn.rollback()

    with conn.cursor() as cur:
        cur.execute(IDENT, (1,))
        chk.row(cur.fetchone(), 1, "after the failed copy")
        cur.execute(
            "select count(*) filter (where body like 'many %%'), count(*) filter (where body like 'values %%'),"
            " count(*) filter (where body like 'copied %%'), count(*) filter (where body like 'broken %%'),"
            " count(*) filter (where owner is distinct from %s) from api.notes",
            (me["sub"],),
        )
        many, values, copied, broken, foreign = cur.fetchone()
    conn.commit()
    conn.close()
    done({
        "many": many, "values": values, "copied": copied, "broken": broken, "foreign": foreign,
        "todos_out": lines, "copy_failed": failed, "checked": chk.checked,
    })


main()
