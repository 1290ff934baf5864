"""More psycopg2 connections than pgtoken has server connections, one
thread each, in the default (non-autocommit) mode: every statement checks
its identity, and each client inserts todos, committing some and rolling
back others, and counts what it sees under row-level security."""

import threading

import psycopg2

from compat_common import IDENT, Checker, clients, done, rounds


def work(client, n, results, errors):
    try:
        chk = Checker(client)
        committed = 0
        conn = psycopg2.connect(client["dsn"])
        for i in range(n):
            with conn.cursor() as cur:
                cur.execute(IDENT, (i,))
                chk.row(cur.fetchone(), i, "select")
                if i % 3 == 0:
                    cur.execute(
                        "insert into api.todos (title) values (%s) returning owner, current_user::text",
                        ("py %d" % i,),
                    )
                    owner, role = cur.fetchone()
                    chk.ident(role, owner, "insert (owner default)")
                    cur.execute("select count(*) from api.todos where title like 'py %%'")
                    seen = cur.fetchone()[0]
                    if seen != committed + 1:
                        raise AssertionError("sees %d todos, want %d" % (seen, committed + 1))
                    if i % 2 == 0:
                        conn.commit()
                        committed += 1
                    else:
                        conn.rollback()
                else:
                    conn.commit()
        conn.close()
        results[client["sub"]] = {"committed": committed, "checked": chk.checked}
    except Exception as e:  # reported by the main thread
        errors.append("%s: %r" % (client["sub"], e))


def main():
    results, errors = {}, []
    threads = [
        threading.Thread(target=work, args=(c, rounds(60), results, errors))
        for c in clients()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("\n".join(errors))
    done(results)


main()
