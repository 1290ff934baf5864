package tracker

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/session/sqlscan"
)

// TestBatchFailedBeforeItsSync: the server's error arrives before the
// client's Sync is read (the client flushed and waited, or its Sync came
// in a later read), so the tracker skips the rest of the batch. The Sync
// ends the batch all the same: the next batch starts outside any
// transaction and must get the prelude (testdata/scenarios/
// error-then-late-sync.txt shows its statements running as the login
// role without it).
func TestBatchFailedBeforeItsSync(t *testing.T) {
	sel := sqlscan.Split("select 1/0", nil)[0]
	tr := attached()
	if s := tr.Extended('P', sel.Kind, 0); s.Prelude != LocalPrelude {
		t.Fatalf("first Parse: %+v", s)
	}
	tr.Push(Unit{Kind: Bind, Own: OwnPrelude})
	tr.Push(Unit{Kind: Execute, Own: OwnPrelude})
	tr.Push(Unit{Kind: Parse})
	for _, typ := range []byte{'B', 'E', 'H'} {
		tr.Extended(typ, sel.Kind, 0)
	}
	tr.Push(Unit{Kind: Bind})
	tr.Push(Unit{Kind: Execute})
	feed(t, tr, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ParseComplete{}, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"})

	// The client's Sync, read after the error came.
	tr.Extended('S', 0, 0)
	tr.Push(Unit{Kind: Sync})
	feed(t, tr, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if tr.InBatch() {
		t.Errorf("the Sync did not end the batch")
	}
	if s := tr.Extended('P', sel.Kind, 0); s.Wait || s.Prelude != LocalPrelude {
		t.Fatalf("first Parse of the next batch: %+v, want the prelude", s)
	}
}
