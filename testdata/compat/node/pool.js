'use strict'
// node-postgres pg.Pool, one per identity, each with more connections than
// pgtoken has server connections, running named queries and transactions
// concurrently; each identity sees only its rows under row-level security
// (the demo seed gives alice and bob three todos each).

const { Pool } = require('pg')
const { IDENT, clients, rounds, Checker, done } = require('./common')

async function task(pool, c, chk, n) {
  for (let i = 0; i < n; i++) {
    if (i % 2 === 0) {
      const r = await pool.query({ name: 'pool_ident', text: IDENT, values: [i], rowMode: 'array' })
      chk.row(r.rows[0], i, 'pool.query')
      continue
    }
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      const r = await client.query({ name: 'pool_ident', text: IDENT, values: [i], rowMode: 'array' })
      chk.row(r.rows[0], i, 'pool transaction')
      const t = await client.query({
        name: 'pool_todos',
        text: "select count(*)::int, coalesce(bool_and(title like $1 || ':%'), false) from api.todos",
        values: [c.sub],
        rowMode: 'array',
      })
      if (t.rows[0][0] !== 3 || t.rows[0][1] !== true) {
        throw new Error(`${c.sub} sees ${t.rows[0][0]} todos (all own: ${t.rows[0][1]}), want its 3`)
      }
      await client.query('COMMIT')
    } finally {
      client.release()
    }
  }
}

async function main() {
  const n = rounds(40)
  const pools = []
  const jobs = []
  const checkers = {}
  for (const c of clients()) {
    const pool = new Pool({ ...c.config, max: 8 })
    pools.push(pool)
    const chk = new Checker(c)
    checkers[c.sub] = chk
    for (let w = 0; w < 8; w++) jobs.push(task(pool, c, chk, n))
  }
  const results = await Promise.allSettled(jobs)
  await Promise.all(pools.map((p) => p.end()))
  const failed = results.filter((r) => r.status === 'rejected')
  if (failed.length > 0) {
    for (const f of failed) console.error(f.reason && f.reason.stack ? f.reason.stack : f.reason)
    process.exit(1)
  }
  const out = {}
  for (const [sub, chk] of Object.entries(checkers)) out[sub] = { checked: chk.checked }
  done(out)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
