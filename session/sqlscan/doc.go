// Package sqlscan reads the SQL text of simple Query messages the way the
// PostgreSQL 15 server does, for pgtoken.
//
// Split cuts a Query string into the statements the server will run and
// classifies each one (transaction control, SET, DISCARD, ...). Policy.Check
// refuses statements that would change the role or the claims pgtoken sets
// for each transaction.
//
// The lexer assumes standard_conforming_strings is on and that the client
// encoding never puts ASCII bytes inside multibyte characters (UTF8 and the
// other server encodings); the guard refuses changing either. A NUL byte,
// which the server refuses in a Query, is refused too.
//
// The guard only sees the text it is given. Functions, views, rules,
// triggers and role or database settings already in the database are
// invisible to it, as is SQL that a function builds at run time (its scan of
// function bodies is best effort), and so are extensions that run SQL on
// other connections (dblink).
package sqlscan
