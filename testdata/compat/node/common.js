'use strict'
// Helpers shared by the node-postgres compatibility scripts.
//
// The Go test (internal/compat/node_test.go) passes the clients to use in
// COMPAT_CLIENTS, a JSON list of {config, role, sub}: config is a pg.Client
// configuration logging in to pgtoken with a token for that role and sub as
// the password. Scripts exit non-zero on any failure and print one JSON
// object with what they saw on success.

// Who runs this statement: role, sub claim ("<none>" when unset), and the
// parameter back.
const IDENT =
  "select current_user::text, coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>'), $1::int"

function clients() {
  return JSON.parse(process.env.COMPAT_CLIENTS)
}

function rounds(def) {
  return parseInt(process.env.COMPAT_ROUNDS || String(def), 10)
}

// Checker checks that every statement ran as the client's role and sub.
class Checker {
  constructor(client) {
    this.want = [client.role, client.sub]
    this.checked = 0
  }

  ident(role, sub, where) {
    this.checked++
    if (role !== this.want[0] || sub !== this.want[1]) {
      throw new Error(`${where}: statement ran as ${role}/${sub}, want ${this.want.join('/')}`)
    }
  }

  row(row, i, where) {
    this.ident(row[0], row[1], where)
    if (row[2] !== i) {
      throw new Error(`${where}: parameter ${i} came back as ${row[2]}`)
    }
  }
}

// expectError runs p and checks it fails with SQLSTATE code.
async function expectError(p, code, where) {
  try {
    await p
  } catch (e) {
    if (e.code === code) return
    throw new Error(`${where}: want SQLSTATE ${code}, got ${e.code}: ${e.message}`)
  }
  throw new Error(`${where}: want SQLSTATE ${code}, got no error`)
}

function done(result) {
  process.stdout.write(JSON.stringify(result) + '\n')
}

module.exports = { IDENT, clients, rounds, Checker, expectError, done }
