package pgmodel

// Transaction blocks, as xact.c keeps them: a stack of states, the top
// level's first, one more per savepoint. The statement-level functions
// (BEGIN, COMMIT, ...) only move the block state; CommitTransactionCommand
// (commitCommand), at the end of each statement or message, acts on it.

type blockState uint8

const (
	tbDefault blockState = iota
	tbStarted
	tbBegin
	tbInProgress
	tbImplicit
	tbEnd
	tbAbort
	tbAbortEnd
	tbAbortPending
	tbPrepare
	tbSubBegin
	tbSubInProgress
	tbSubRelease
	tbSubCommit
	tbSubAbort
	tbSubAbortEnd
	tbSubAbortPending
	tbSubRestart
	tbSubAbortRestart
)

// xstate is one level of the transaction stack.
type xstate struct {
	block   blockState
	name    string // savepoint name
	chain   bool   // top level: COMMIT/ROLLBACK AND CHAIN
	aborted bool   // its abort ran (settings and writes undone)
	notesAt int    // the transaction's writes when the savepoint began
}

func (b *backend) cur() *xstate { return b.xs[len(b.xs)-1] }
func (b *backend) top() *xstate { return b.xs[0] }

// status is ReadyForQuery's transaction status
// (TransactionBlockStatusCode).
func (b *backend) status() byte {
	switch b.cur().block {
	case tbDefault, tbStarted:
		return 'I'
	case tbAbort, tbSubAbort, tbAbortEnd, tbSubAbortEnd, tbAbortPending, tbSubAbortPending, tbSubRestart, tbSubAbortRestart:
		return 'E'
	}
	return 'T'
}

// inBlock is IsTransactionBlock: an explicit or implicit block is open.
func (b *backend) inBlock() bool {
	s := b.cur().block
	return s != tbDefault && s != tbStarted
}

// abortedState is IsAbortedTransactionBlockState.
func (b *backend) abortedState() bool {
	s := b.cur().block
	return s == tbAbort || s == tbSubAbort
}

// startCommand is start_xact_command.
func (b *backend) startCommand() {
	if b.xactStarted {
		return
	}
	if s := b.cur(); s.block == tbDefault {
		b.startTransaction()
		s.block = tbStarted
	}
	b.xactStarted = true
}

// finishCommand is finish_xact_command.
func (b *backend) finishCommand() *Error {
	if !b.xactStarted {
		return nil
	}
	b.xactStarted = false
	return b.commitCommand()
}

func (b *backend) startTransaction() {
	b.g.enter()
	t := b.top()
	t.aborted = false
	b.snapshot, b.pipelining, b.needCommit = false, false, false
	b.iso = "read committed"
	b.notes = nil
}

func (b *backend) commitTransaction() {
	b.g.leave(true)
	b.srv.data.commitNotes(b.notes)
	b.notes = nil
	b.dropPortals(0)
}

func (b *backend) abortTransaction() {
	t := b.top()
	if t.aborted {
		return
	}
	t.aborted = true
	b.g.leave(false)
	b.notes = nil
	b.dropPortals(0)
}

// endTop ends the top level after a commit or cleanup, chaining a new
// transaction with the same characteristics when asked.
func (b *backend) endTop() {
	t := b.top()
	t.block = tbDefault
	if t.chain {
		t.chain = false
		iso := b.iso
		b.startTransaction()
		b.iso = iso
		t.block = tbInProgress
	}
}

// pushSub opens a savepoint level (PushTransaction).
func (b *backend) pushSub(name string) {
	b.xs = append(b.xs, &xstate{block: tbSubBegin, name: name, notesAt: len(b.notes)})
	b.g.enter()
}

func (b *backend) commitSub() {
	b.g.leave(true)
	b.reparentPortals(len(b.xs) - 1)
	b.xs = b.xs[:len(b.xs)-1]
}

func (b *backend) abortSub() {
	s := b.cur()
	if s.aborted {
		return
	}
	s.aborted = true
	b.g.leave(false)
	b.notes = b.notes[:s.notesAt]
	b.dropPortals(len(b.xs) - 1)
}

func (b *backend) cleanupSub() { b.xs = b.xs[:len(b.xs)-1] }

// commitCommand is CommitTransactionCommand.
func (b *backend) commitCommand() *Error {
	s := b.cur()
	switch s.block {
	case tbStarted:
		b.commitTransaction()
		s.block = tbDefault
	case tbBegin:
		s.block = tbInProgress
	case tbEnd:
		b.commitTransaction()
		b.endTop()
	case tbAbortEnd:
		b.endTop()
	case tbAbortPending:
		b.abortTransaction()
		b.endTop()
	case tbPrepare:
		return b.prepareTransaction()
	case tbSubBegin:
		s.block = tbSubInProgress
	case tbSubRelease:
		for b.cur().block == tbSubRelease {
			b.commitSub()
		}
	case tbSubCommit:
		for b.cur().block == tbSubCommit {
			b.commitSub()
		}
		switch b.cur().block {
		case tbEnd:
			b.commitTransaction()
			b.endTop()
		case tbPrepare:
			return b.prepareTransaction()
		}
	case tbSubAbortPending:
		b.abortSub()
		b.cleanupSub()
		return b.commitCommand()
	case tbSubRestart, tbSubAbortRestart:
		name := s.name
		b.abortSub()
		b.cleanupSub()
		b.pushSub(name)
		b.cur().block = tbSubInProgress
	case tbSubAbortEnd:
		b.cleanupSub()
		return b.commitCommand()
	}
	// tbInProgress, tbImplicit, tbSubInProgress: the command counter moves
	// on; tbAbort, tbSubAbort: wait for ROLLBACK.
	return nil
}

// prepareTransaction is PrepareTransaction with max_prepared_transactions
// = 0, Postgres's default: it fails, and the failure aborts the
// transaction (abortCurrent sees tbPrepare).
func (b *backend) prepareTransaction() *Error {
	return &Error{Code: "55000", Message: "prepared transactions are disabled",
		Hint: "Set max_prepared_transactions to a nonzero value."}
}

// abortCurrent is AbortCurrentTransaction, after an error.
func (b *backend) abortCurrent() {
	s := b.cur()
	switch s.block {
	case tbDefault:
	case tbStarted, tbBegin, tbImplicit, tbEnd, tbAbortPending, tbPrepare:
		b.abortTransaction()
		s.block = tbDefault
		s.chain = false
	case tbInProgress:
		b.abortTransaction()
		s.block = tbAbort
	case tbAbort:
	case tbAbortEnd:
		s.block = tbDefault
		s.chain = false
	case tbSubInProgress:
		b.abortSub()
		s.block = tbSubAbort
	case tbSubBegin, tbSubRelease, tbSubCommit, tbSubAbortPending, tbSubRestart:
		b.abortSub()
		b.cleanupSub()
		b.abortCurrent()
	case tbSubAbort:
	case tbSubAbortEnd, tbSubAbortRestart:
		b.cleanupSub()
		b.abortCurrent()
	}
}

// beginImplicit and endImplicit bracket the statements of a
// multi-statement Query.
func (b *backend) beginImplicit() {
	if s := b.cur(); s.block == tbStarted {
		s.block = tbImplicit
	}
}

func (b *backend) endImplicit() {
	if s := b.cur(); s.block == tbImplicit {
		s.block = tbStarted
	}
}

// noTransaction is the warning for COMMIT or ROLLBACK outside a block.
func noTransaction() *Error {
	return &Error{Severity: "WARNING", Code: "25P01", Message: "there is no transaction in progress"}
}

func onlyInBlock(what string) *Error {
	return &Error{Code: "25P01", Message: what + " can only be used in transaction blocks"}
}

// beginBlock is BeginTransactionBlock.
func (b *backend) beginBlock() {
	s := b.cur()
	switch s.block {
	case tbStarted, tbImplicit:
		s.block = tbBegin
	default:
		b.notice(&Error{Severity: "WARNING", Code: "25001", Message: "there is already a transaction in progress"})
	}
}

// endBlock is EndTransactionBlock (COMMIT): false means the transaction
// rolls back instead (its tag is ROLLBACK).
func (b *backend) endBlock(chain bool) (bool, *Error) {
	s := b.cur()
	result := false
	switch s.block {
	case tbInProgress:
		s.block = tbEnd
		result = true
	case tbImplicit:
		if chain {
			return false, onlyInBlock("COMMIT AND CHAIN")
		}
		b.notice(noTransaction())
		s.block = tbEnd
		result = true
	case tbAbort:
		s.block = tbAbortEnd
	case tbSubInProgress:
		// Every savepoint commits, then the transaction.
		for i := len(b.xs) - 1; i > 0; i-- {
			b.xs[i].block = tbSubCommit
		}
		b.top().block = tbEnd
		result = true
	case tbSubAbort:
		b.markRollback()
	case tbStarted:
		if chain {
			return false, onlyInBlock("COMMIT AND CHAIN")
		}
		b.notice(noTransaction())
		result = true
	}
	b.top().chain = chain
	return result, nil
}

// markRollback marks every level to roll back, as COMMIT in a failed
// savepoint and ROLLBACK in any savepoint do.
func (b *backend) markRollback() {
	for i := len(b.xs) - 1; i > 0; i-- {
		switch b.xs[i].block {
		case tbSubInProgress:
			b.xs[i].block = tbSubAbortPending
		case tbSubAbort:
			b.xs[i].block = tbSubAbortEnd
		}
	}
	switch b.top().block {
	case tbInProgress:
		b.top().block = tbAbortPending
	case tbAbort:
		b.top().block = tbAbortEnd
	}
}

// userAbortBlock is UserAbortTransactionBlock (ROLLBACK).
func (b *backend) userAbortBlock(chain bool) *Error {
	s := b.cur()
	switch s.block {
	case tbInProgress:
		s.block = tbAbortPending
	case tbAbort:
		s.block = tbAbortEnd
	case tbSubInProgress, tbSubAbort:
		b.markRollback()
	case tbStarted, tbImplicit:
		if chain {
			return onlyInBlock("ROLLBACK AND CHAIN")
		}
		b.notice(noTransaction())
		s.block = tbAbortPending
	}
	b.top().chain = chain
	return nil
}

// requireBlock is RequireTransactionBlock.
func (b *backend) requireBlock(what string) *Error {
	if b.inBlock() {
		return nil
	}
	return onlyInBlock(what)
}

// defineSavepoint is DefineSavepoint.
func (b *backend) defineSavepoint(name string) *Error {
	switch b.cur().block {
	case tbInProgress, tbSubInProgress:
		b.pushSub(name)
		return nil
	case tbImplicit:
		return onlyInBlock("SAVEPOINT")
	}
	return &Error{Code: "pgmodel", Message: "pgmodel: SAVEPOINT in an unexpected state"}
}

// findSavepoint returns the index of the innermost savepoint called name.
func (b *backend) findSavepoint(name string) int {
	for i := len(b.xs) - 1; i > 0; i-- {
		if b.xs[i].name == name {
			return i
		}
	}
	return -1
}

func noSavepoint(name string) *Error {
	return &Error{Code: "3B001", Message: "savepoint \"" + name + "\" does not exist"}
}

// releaseSavepoint is ReleaseSavepoint.
func (b *backend) releaseSavepoint(name string) *Error {
	switch b.cur().block {
	case tbInProgress:
		return noSavepoint(name)
	case tbImplicit:
		return onlyInBlock("RELEASE SAVEPOINT")
	case tbSubInProgress:
	default:
		return &Error{Code: "pgmodel", Message: "pgmodel: RELEASE in an unexpected state"}
	}
	target := b.findSavepoint(name)
	if target < 0 {
		return noSavepoint(name)
	}
	for i := len(b.xs) - 1; i >= target; i-- {
		b.xs[i].block = tbSubRelease
	}
	return nil
}

// rollbackToSavepoint is RollbackToSavepoint.
func (b *backend) rollbackToSavepoint(name string) *Error {
	switch b.cur().block {
	case tbInProgress, tbAbort:
		return noSavepoint(name)
	case tbImplicit:
		return onlyInBlock("ROLLBACK TO SAVEPOINT")
	case tbSubInProgress, tbSubAbort:
	default:
		return &Error{Code: "pgmodel", Message: "pgmodel: ROLLBACK TO in an unexpected state"}
	}
	target := b.findSavepoint(name)
	if target < 0 {
		return noSavepoint(name)
	}
	for i := len(b.xs) - 1; i > target; i-- {
		switch b.xs[i].block {
		case tbSubInProgress:
			b.xs[i].block = tbSubAbortPending
		case tbSubAbort:
			b.xs[i].block = tbSubAbortEnd
		}
	}
	switch b.xs[target].block {
	case tbSubInProgress:
		b.xs[target].block = tbSubRestart
	case tbSubAbort:
		b.xs[target].block = tbSubAbortRestart
	}
	return nil
}

// prepareBlock is PrepareTransactionBlock: false means no transaction was
// prepared (the tag is ROLLBACK).
func (b *backend) prepareBlock() (bool, *Error) {
	ok, err := b.endBlock(false)
	if err != nil || !ok {
		return false, err
	}
	if t := b.top(); t.block == tbEnd {
		t.block = tbPrepare
		return true, nil
	}
	return false, nil // outside a block: EndTransactionBlock warned
}

// preventInBlock is PreventInTransactionBlock.
func (b *backend) preventInBlock(what string) *Error {
	switch {
	case b.inBlock():
		return &Error{Code: "25001", Message: what + " cannot run inside a transaction block"}
	case b.pipelining:
		return &Error{Code: "25001", Message: what + " cannot be executed within a pipeline"}
	}
	b.needCommit = true
	return nil
}
