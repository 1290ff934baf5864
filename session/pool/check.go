package pool

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// defaultCheckTimeout bounds a liveness check when the pool has no
// connect timeout.
const defaultCheckTimeout = 10 * time.Second

// errCheckTimeout is a liveness check that got no answer in time.
var errCheckTimeout = errors.New("no answer to the liveness check")

// check sends an empty query on c, which the caller holds, and waits for
// its answer: EmptyQueryResponse, then ReadyForQuery with status idle. The
// answers are read by the conn's own reader goroutine, like every message
// from the server, and handed to a checker attached for the purpose. A conn
// that does not answer in time is closed. The pool's mutex is not held.
func (p *Pool) check(ctx context.Context, c *Conn) error {
	k := &checker{done: make(chan error, 1)}
	c.Attach(k)
	defer c.Detach()
	if c.Dead() {
		// Its reader may have ended before it could see k (see
		// session.attach for the same handshake).
		return ErrConnLost
	}
	at := c.W.Begin('Q')
	c.W.AppendCString("")
	c.W.End(at)
	if err := c.Flush(); err != nil {
		return err
	}
	timeout := p.cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = defaultCheckTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-k.done:
		return err
	case <-t.C:
		c.Close()
		return fmt.Errorf("%w within %s", errCheckTimeout, timeout)
	case <-ctx.Done():
		c.Close() // its answer would arrive with nobody to take it
		return ctx.Err()
	}
}

// checker is the Handler of a conn during its liveness check. Its methods
// run on the conn's reader goroutine; done receives the outcome once.
type checker struct {
	done chan error
}

func (k *checker) finish(err error) {
	select {
	case k.done <- err:
	default:
	}
}

// ServerMessage takes the answers to the empty query.
func (k *checker) ServerMessage(c *Conn, typ byte, _ int) error {
	switch typ {
	case 'I', 'N', 'S': // EmptyQueryResponse, NoticeResponse, ParameterStatus
		return c.R.Skip()
	case 'Z':
		body, err := c.R.Body()
		if err != nil {
			return err
		}
		if len(body) != 1 || body[0] != 'I' {
			err := fmt.Errorf("%w: liveness check ended in transaction status %q", ErrConnLost, body)
			k.finish(err)
			return err
		}
		k.finish(nil)
		return nil
	case 'E':
		err := fmt.Errorf("%w: %w", ErrConnLost, c.readError("to the liveness check"))
		k.finish(err)
		return err
	default:
		err := fmt.Errorf("%w: server sent %q to the liveness check", ErrConnLost, typ)
		k.finish(err)
		return err
	}
}

// ServerIdle has nothing to flush.
func (*checker) ServerIdle(*Conn) {}

// ServerGone reports the loss of the conn mid-check.
func (k *checker) ServerGone(_ *Conn, err error) {
	if err == nil {
		err = ErrConnLost
	}
	k.finish(fmt.Errorf("%w: %w", ErrConnLost, err))
}
