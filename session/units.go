package session

import "github.com/pgtoken/pgtoken/wire"

// unitKind says which client (or pgtoken) message a unit stands for, and so
// which server messages answer it.
type unitKind uint8

const (
	uQuery     unitKind = iota + 1 // simple Query: everything up to ReadyForQuery
	uParse                         // ParseComplete
	uBind                          // BindComplete
	uDescribeS                     // ParameterDescription, then RowDescription or NoData
	uDescribeP                     // RowDescription or NoData
	uExecute                       // rows, then CommandComplete/EmptyQueryResponse/PortalSuspended
	uClose                         // CloseComplete
	uSync                          // ReadyForQuery
	uFunc                          // FunctionCallResponse, then ReadyForQuery
	uLocal                         // an answer pgtoken gives itself, in order with the server's
)

// ownKind says whose a unit is.
type ownKind uint8

const (
	ownClient  ownKind = iota // the client's: relay the answers
	ownPrelude                // the prelude: swallow the answers, but an error reaches the client
	ownMaint                  // pgtoken's upkeep (settings sync, capture): swallow everything
)

// unit is one expected answer from the server (or a local answer), queued in
// the order the messages were sent so the reader knows what each server
// message belongs to.
type unit struct {
	kind unitKind
	own  ownKind

	// uQuery: the statements pgtoken put into the text. skip is how many
	// leading statement completions belong to the prelude; prefix is its
	// length in characters (error positions are shifted back by it). plan
	// describes injections after COMMIT in the middle of the string.
	skip   int
	prefix int
	plan   *queryPlan
	// noPosition drops error positions: the text sent is not the client's
	// (SQL EXECUTE under pgtoken's statement name).
	noPosition bool

	// rewrite replaces the server's error for this unit (a refused
	// statement that pgtoken sent as a harmless syntax error, so the
	// transaction state follows as it would on any error).
	rewrite *wire.Error

	// uLocal: bytes to send, and whether a ReadyForQuery with the current
	// transaction status follows them.
	local []byte
	rfq   bool

	// collect receives DataRow bodies of an ownMaint query; done runs
	// when the unit completes (err is the server's error, if any).
	collect func(body []byte)
	done    func(err *wire.Error)
}

// syncPoint reports whether the unit ends with a ReadyForQuery.
func (u *unit) syncPoint() bool {
	return u.kind == uQuery || u.kind == uSync || u.kind == uFunc
}

// queryPlan describes a Query whose text has the prelude injected after
// transaction-ending statements as well as in front. segs alternates the
// number of completions that are pgtoken's and the client's; cuts lists the
// character ranges of injected text, so error positions map back.
type queryPlan struct {
	segs []planSeg
	cuts []charRange
}

type planSeg struct {
	own bool
	n   int
}

type charRange struct{ at, n int } // 0-based start and length in characters

// ownCompletion reports whether the i-th completion (0-based) of the query
// belongs to pgtoken.
func (u *unit) ownCompletion(i int) bool {
	if u.own != ownClient {
		return true
	}
	if u.plan == nil {
		return i < u.skip
	}
	for _, s := range u.plan.segs {
		if i < s.n {
			return s.own
		}
		i -= s.n
	}
	return false
}

// mapPosition turns a 1-based character position in the text pgtoken sent
// into one in the client's text; ok is false when it falls in injected text.
func (u *unit) mapPosition(p int) (int, bool) {
	if u.plan == nil {
		if p <= u.prefix {
			return 0, false
		}
		return p - u.prefix, true
	}
	shift := 0
	for _, c := range u.plan.cuts {
		if p-1 < c.at {
			break
		}
		if p-1 < c.at+c.n {
			return 0, false
		}
		shift += c.n
	}
	return p - shift, true
}

// unitQueue is a FIFO of units; the client goroutine pushes, the server
// reader pops, both under the session mutex.
type unitQueue struct {
	buf  []unit
	head int
}

func (q *unitQueue) len() int { return len(q.buf) - q.head }

func (q *unitQueue) push(u unit) { q.buf = append(q.buf, u) }

// peek returns the head unit, or nil.
func (q *unitQueue) peek() *unit {
	if q.head == len(q.buf) {
		return nil
	}
	return &q.buf[q.head]
}

// at returns the i-th unit from the head.
func (q *unitQueue) at(i int) *unit { return &q.buf[q.head+i] }

func (q *unitQueue) pop() {
	q.buf[q.head] = unit{}
	q.head++
	if q.head == len(q.buf) {
		q.buf = q.buf[:0]
		q.head = 0
	}
}

func (q *unitQueue) clear() {
	for q.len() > 0 {
		q.pop()
	}
}
