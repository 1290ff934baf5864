package session_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/session"
)

func TestDbgSkip(t *testing.T) {
	_, env := modelEnv(t, nil)
	c1 := newModelClient(t, "web_admin", map[string]string{"sub": "c1"})
	c := env.Connect(c1.token)
	fe := c.Frontend()
	who := "select current_user::text /*c1*/"
	steps := [][]pgproto3.FrontendMessage{
		{&pgproto3.Query{String: "begin"}, &pgproto3.Parse{Name: "s1", Query: who}, &pgproto3.Sync{}},
		{&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Query{String: who}},
		{&pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Bind{PreparedStatement: "s1", DestinationPortal: "p"}, &pgproto3.FunctionCall{Function: 957, Arguments: [][]byte{[]byte("-1")}}, &pgproto3.Sync{}},
	}
	for i, st := range steps {
		for _, m := range st {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = c.Conn().SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			m, err := fe.Receive()
			if err != nil {
				break
			}
			t.Logf("step %d: %T %v", i, m, m)
		}
	}
	t.Log(session.DescribeSessions(env.App.Server))
	_ = fmt.Sprint()
}
