'use strict'
// node-postgres named queries ({name, text, values}: prepared once per
// connection, then only bound and executed) across many transactions, from
// more clients than pgtoken has server connections. Every client uses the
// same statement names with its own text, so a statement of another client
// would show. Also: transactions, savepoints, errors, and startup
// parameters (application_name, statement_timeout) in every transaction.

const { Client } = require('pg')
const { IDENT, clients, rounds, Checker, expectError, done } = require('./common')

async function work(c, k, n) {
  const client = new Client(c.config)
  await client.connect()
  const chk = new Checker(c)
  const q = (name, text, values) => client.query({ name, text, values, rowMode: 'array' })
  const ident = async (i, where) => {
    const r = await q('ident', `${IDENT}, ${k}::int`, [i])
    chk.row(r.rows[0], i, where)
    if (r.rows[0][3] !== k) throw new Error(`${where}: ran client ${r.rows[0][3]}'s statement, not ${k}'s`)
  }
  const count = async () => (await q('count', 'select count(*)::int from api.todos', [])).rows[0][0]
  let committed = 0
  for (let i = 0; i < n; i++) {
    switch (i % 5) {
      case 0:
        await ident(i, 'autocommit')
        break
      case 1: {
        await client.query('BEGIN')
        await ident(i, 'transaction')
        const r = await q('add', 'insert into api.todos (title) values ($1) returning owner, current_user::text', [`node ${i}`])
        chk.ident(r.rows[0][1], r.rows[0][0], 'insert (owner default)')
        const seen = await count()
        if (seen !== committed + 1) throw new Error(`sees ${seen} todos, want ${committed + 1}`)
        await client.query('COMMIT')
        committed++
        break
      }
      case 2:
        await client.query('BEGIN')
        await client.query('SAVEPOINT s')
        await expectError(q('div', 'select 1 / $1::int', [0]), '22012', 'error in a savepoint')
        await client.query('ROLLBACK TO SAVEPOINT s')
        await ident(i, 'after rollback to savepoint')
        await q('add', 'insert into api.todos (title) values ($1) returning owner, current_user::text', [`undone ${i}`])
        await client.query('ROLLBACK')
        break
      case 3:
        await expectError(q('div', 'select 1 / $1::int', [0]), '22012', 'error')
        await ident(i, 'after an error')
        if ((await count()) !== committed) throw new Error('todo count changed by a rolled back transaction')
        break
      case 4: {
        const r = await q('settings', "select current_setting('application_name'), current_setting('statement_timeout')", [])
        const want = [c.config.application_name || '', c.config.statement_timeout ? `${c.config.statement_timeout}ms` : '0']
        if (r.rows[0][0] !== want[0] || r.rows[0][1] !== want[1]) {
          throw new Error(`settings ${JSON.stringify(r.rows[0])}, want ${JSON.stringify(want)}`)
        }
        break
      }
    }
  }
  await client.end()
  return { sub: c.sub, committed, checked: chk.checked }
}

async function main() {
  const cs = clients()
  const n = rounds(100)
  const results = await Promise.allSettled(cs.map((c, k) => work(c, k, n)))
  const failed = results.filter((r) => r.status === 'rejected')
  if (failed.length > 0) {
    for (const f of failed) console.error(f.reason && f.reason.stack ? f.reason.stack : f.reason)
    process.exit(1)
  }
  const out = {}
  for (const r of results) out[r.value.sub] = { committed: r.value.committed, checked: r.value.checked }
  done(out)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
