package session

import (
	"cmp"
	"crypto/tls"
	"maps"
	"net"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/wire"
)

// The console's SHOW commands. Each has PgBouncer's columns, in its order
// and with its types (PgBouncer 1.25's src/admin.c and src/stats.c), so
// that its exporters and dashboards read pgtoken as they read PgBouncer; a
// few pgtoken columns follow PgBouncer's. Where pgtoken has no such thing
// (byte counts, DNS caches, per-user limits, replication) the column holds
// what PgBouncer shows with that feature off: 0, an empty string or NULL.

// show answers SHOW item.
func (c *console) show(item string) ([]byte, error) {
	s := c.srv
	switch strings.ToLower(item) {
	case "databases":
		return s.showDatabases().encode("SHOW"), nil
	case "pools":
		return s.showPools().encode("SHOW"), nil
	case "clients":
		return s.showSockets(socketClients).encode("SHOW"), nil
	case "servers":
		return s.showSockets(socketServers).encode("SHOW"), nil
	case "sockets":
		return s.showSockets(socketAll).encode("SHOW"), nil
	case "users":
		return s.showUsers().encode("SHOW"), nil
	case "lists":
		return s.showLists().encode("SHOW"), nil
	case "mem":
		return s.showMem().encode("SHOW"), nil
	case "stats":
		return s.showStats(statsAll).encode("SHOW"), nil
	case "stats_totals":
		return s.showStats(statsTotals).encode("SHOW"), nil
	case "stats_averages":
		return s.showStats(statsAverages).encode("SHOW"), nil
	case "totals":
		return s.showTotals().encode("SHOW"), nil
	case "state":
		m := s.pauseState()
		rs := result{cols: columns("ss", "key", "value")}
		for _, st := range []pauseMode{pauseNone, pausePaused, pauseSuspended} {
			rs.add(st.String(), yesNo(m == st))
		}
		return rs.encode("SHOW"), nil
	case "peers":
		rs := result{cols: columns("isii", "peer_id", "host", "port", "pool_size")}
		peers := *s.peers.Load()
		for _, id := range slices.Sorted(maps.Keys(peers)) {
			host, port := splitHostPort(peers[id])
			rs.add(id, host, port, 0)
		}
		return rs.encode("SHOW"), nil
	case "dns_hosts": // pgtoken keeps no DNS cache
		return (&result{cols: columns("sqs", "hostname", "ttl", "addrs")}).encode("SHOW"), nil
	case "dns_zones":
		return (&result{cols: columns("sqi", "zonename", "serial", "count")}).encode("SHOW"), nil
	case "config":
		return c.showConfig()
	case "version":
		rs := result{cols: columns("s", "version")}
		rs.add("pgtoken " + s.version())
		return rs.encode("SHOW"), nil
	case "help":
		rs := result{cols: columns("ss", "command", "description")}
		for _, h := range consoleHelp {
			rs.add(h[0], h[1])
		}
		return rs.encode("SHOW"), nil
	}
	// Settings some drivers ask for, answered as PgBouncer does.
	for _, p := range fakeParams {
		if strings.EqualFold(item, p[0]) {
			rs := result{cols: columns("s", p[0])}
			rs.add(p[1])
			return rs.encode("SHOW"), nil
		}
	}
	return nil, wire.Errorf(wire.CodeSyntaxError, "unknown SHOW item %q", item).
		WithHint("SHOW HELP lists the commands.")
}

// fakeParams are PgBouncer's answers to SHOW of these settings.
var fakeParams = [][2]string{
	{"client_encoding", "UTF-8"},
	{"default_transaction_isolation", "read committed"},
	{"standard_conforming_strings", "on"},
	{"datestyle", "ISO"},
	{"timezone", "GMT"},
}

func (s *Server) version() string {
	if b := s.cfg.Admin; b != nil {
		return b.Version()
	}
	return "dev"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (c *console) showConfig() ([]byte, error) {
	b := c.srv.cfg.Admin
	if b == nil {
		return nil, wire.Errorf(wire.CodeFeatureNotSupported, "SHOW CONFIG is not available here")
	}
	rs := result{cols: columns("ssss", "key", "value", "default", "changeable")}
	for _, r := range b.ConfigRows() {
		rs.add(r.Key, r.Value, r.Default, yesNo(r.Changeable))
	}
	return rs.encode("SHOW"), nil
}

// A snapshot of what the console reports, taken without holding more than
// one lock at a time.

// clientInfo is one logged-in client (a console too).
type clientInfo struct {
	id               uint32
	role, sub, db    string
	state            string // active (holds a server connection), waiting (for one), idle
	nc               net.Conn
	connect, request time.Time
	appName          string
	serverPID        uint32 // of the attached server connection; 0: none
	cancelling       bool   // a cancel request for it is being forwarded
}

// dbInfo is one database: its upstream and pool, if any.
type dbInfo struct {
	name       string
	host       string
	port       uint16
	database   string // on the upstream
	user       string // the upstream login
	size       int
	life       pool.Lifecycle
	pool       *pool.Pool // nil before the first client
	stats      pool.Stats
	clients    int
	cancelling int
}

// snapshot is the state SHOW commands read.
type snapshot struct {
	clients []clientInfo // by id
	logins  []loginInfo  // by id
	dbs     []dbInfo     // by name
	appName map[uint32]string
}

type loginInfo struct {
	id uint32
	nc net.Conn
}

func (s *Server) snapshot() snapshot {
	var snap snapshot
	s.sessMu.RLock()
	entries := slices.Collect(maps.Values(s.clients))
	for id, nc := range s.logins {
		snap.logins = append(snap.logins, loginInfo{id, nc})
	}
	s.sessMu.RUnlock()
	snap.appName = make(map[uint32]string, len(entries))
	for _, e := range entries {
		ci := clientInfo{appName: e.appName, state: "idle"}
		if con := e.con; con != nil {
			ci.id, ci.role, ci.sub, ci.db, ci.nc, ci.connect = con.id, con.ident.Role, con.ident.Sub, con.db, con.nc, con.start
			ci.request = time.Unix(0, con.lastReq.Load())
			if con.busy.Load() {
				ci.state = "active"
			}
		} else {
			sess := e.sess
			ci.id, ci.role, ci.sub, ci.db, ci.nc, ci.connect = sess.id, sess.ident.Role, sess.ident.Sub, sess.db, sess.nc, sess.start
			sess.mu.Lock()
			switch {
			case sess.conn != nil:
				ci.state, ci.serverPID = "active", sess.conn.PID
			case sess.acquiring != nil:
				ci.state = "waiting"
			}
			ci.cancelling = sess.cancelling
			ci.request = sess.idleSince
			sess.mu.Unlock()
		}
		if ci.request.IsZero() {
			ci.request = ci.connect
		}
		snap.appName[ci.id] = ci.appName
		snap.clients = append(snap.clients, ci)
	}
	slices.SortFunc(snap.clients, func(a, b clientInfo) int { return cmp.Compare(a.id, b.id) })
	slices.SortFunc(snap.logins, func(a, b loginInfo) int { return cmp.Compare(a.id, b.id) })

	s.poolsMu.Lock()
	names := slices.Collect(maps.Keys(s.pools))
	for name := range s.cfg.Databases {
		if s.pools[name] == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	life := s.cfg.PoolLifecycle
	for _, name := range names {
		d := dbInfo{name: name, size: s.sizeFor(name), life: life, pool: s.pools[name]}
		if d.pool != nil {
			d.host, d.port, d.database = d.pool.Upstream()
			d.user = d.pool.User()
		} else if pgcfg, err := s.upstreamConfig(name); err == nil {
			d.host, d.port, d.database, d.user = pgcfg.Host, pgcfg.Port, pgcfg.Database, pgcfg.User
		}
		snap.dbs = append(snap.dbs, d)
	}
	s.poolsMu.Unlock()
	byName := map[string]*dbInfo{}
	for i := range snap.dbs {
		d := &snap.dbs[i]
		byName[d.name] = d
		if d.pool != nil {
			d.stats = d.pool.Stats()
			d.size = d.stats.Size
		}
	}
	for _, ci := range snap.clients {
		if d := byName[ci.db]; d != nil {
			d.clients++
			if ci.cancelling {
				d.cancelling++
			}
		}
	}
	return snap
}

func (s *Server) showDatabases() *result {
	rs := &result{cols: columns("ssissiiiissiiiiii",
		"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
		// reserve_pool: PgBouncer's name before 1.24 (reserve_pool_size
		// since). Debian's prometheus-pgbouncer-exporter reads this one;
		// prometheus-community's reads either, and would report the same
		// series twice if both were here.
		"reserve_pool",
		"server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
		"current_connections", "max_client_connections", "current_client_connections",
		"paused", "disabled")}
	for _, d := range s.snapshot().dbs {
		// pool_mode, load_balance_hosts: NULL, no per-database override;
		// max_*: 0, no such limit.
		rs.add(d.name, d.host, int(d.port), d.database, d.user, d.size, min(d.life.MinSize, d.size), d.life.ReserveSize,
			int64(d.life.ServerLifetime/time.Second), nil, nil, 0,
			d.stats.Total, 0, d.clients,
			d.stats.Paused, 0)
	}
	return rs
}

func (s *Server) showPools() *result {
	rs := &result{cols: columns("ssiiiiiiiiiiiiissii",
		"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
		"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
		"maxwait", "maxwait_us", "pool_mode", "load_balance_hosts",
		// pgtoken's
		"pool_size", "paused")}
	mode := string(s.cfg.Mode)
	for _, d := range s.snapshot().dbs {
		if d.pool == nil {
			continue // PgBouncer, too, makes a pool at its first client
		}
		st := d.stats
		// A client whose cancel request is being forwarded: the request
		// is active, and so is the connection that carries it to the
		// server.
		rs.add(d.name, d.user, max(d.clients-st.Waiting, 0), st.Waiting, d.cancelling, 0,
			st.Active-st.Tested, d.cancelling, 0, st.Idle-st.Used, st.Used, st.Tested, st.Connecting,
			int64(st.MaxWait/time.Second), int64(st.MaxWait%time.Second/time.Microsecond), mode, nil,
			st.Size, st.Paused)
	}
	return rs
}

// Which rows SHOW CLIENTS, SERVERS and SOCKETS list.
type socketKind int

const (
	socketClients socketKind = iota
	socketServers
	socketAll // SOCKETS: clients and servers, logins too, with buffer columns
)

func (s *Server) showSockets(kind socketKind) *result {
	types := "ssssssisiTTiiississii"
	names := []string{"type", "user", "database", "replication", "state",
		"addr", "port", "local_addr", "local_port", "connect_time", "request_time",
		"wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
		"application_name", "prepared_statements", "id"}
	switch kind {
	case socketClients: // pgtoken's: the token's subject, the attached server connection's pid
		types += "si"
		names = append(names, "sub", "server_pid")
	case socketServers: // pgtoken's: the client the connection is attached to
		types += "i"
		names = append(names, "client_id")
	case socketAll: // PgBouncer's buffer positions: pgtoken's buffers are not shown (0)
		types += "iiiiiii"
		names = append(names, "recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail")
	}
	rs := &result{cols: columns(types, names...)}
	snap := s.snapshot()
	row := func(vals []any, extra ...any) {
		if kind == socketAll {
			extra = []any{0, 0, 0, 0, 0, 0, 0}
		}
		rs.add(append(vals, extra...)...)
	}
	if kind != socketServers {
		for _, ci := range snap.clients {
			state, link, serverPID := ci.state, "", any(nil)
			if ci.serverPID != 0 {
				link, serverPID = serverPtr(ci.serverPID), ci.serverPID
			}
			if kind == socketAll {
				state = "cl_" + strings.Replace(state, "idle", "active", 1)
			}
			row(socketRow("C", ci.role, ci.db, state, ci.nc, ci.connect, ci.request, false,
				clientPtr(ci.id), link, 0, ci.appName, ci.id), ci.sub, serverPID)
		}
	}
	if kind != socketClients {
		for _, d := range snap.dbs {
			if d.pool == nil {
				continue
			}
			conns := d.pool.Conns()
			slices.SortFunc(conns, func(a, b pool.ConnInfo) int { return cmp.Compare(a.PID, b.PID) })
			for _, ci := range conns {
				var link, appName string
				var clientID any
				if sess, ok := ci.Handler.(*Session); ok {
					link, appName, clientID = clientPtr(sess.id), snap.appName[sess.id], sess.id
				}
				state := ci.State
				if kind == socketAll {
					state = "sv_" + state
				}
				request := cmp.Or(ci.LastUsed, ci.Born)
				vals := socketRow("S", d.user, d.name, state, nil, ci.Born, request, ci.CloseNeeded,
					serverPtr(ci.PID), link, ci.PID, appName, ci.PID)
				vals[5], vals[6] = splitAddr(ci.Remote)
				vals[7], vals[8] = splitAddr(ci.Local)
				vals[17] = tlsInfo(ci.TLS)
				row(vals, clientID)
			}
		}
	}
	if kind == socketAll {
		for _, l := range snap.logins {
			row(socketRow("C", "(nouser)", "(nodb)", "cl_login", l.nc, time.Time{}, time.Time{}, false,
				clientPtr(l.id), "", 0, "", l.id))
		}
	}
	return rs
}

// socketRow is the part of a SHOW CLIENTS/SERVERS/SOCKETS row every kind
// has. nc, when set, gives the addresses and TLS. wait and wait_us are 0:
// pgtoken does not time each client's wait (SHOW POOLS' maxwait has the
// longest).
func socketRow(typ, user, db, state string, nc net.Conn, connect, request time.Time, closeNeeded bool,
	ptr, link string, remotePID uint32, appName string, id uint32) []any {
	var ra, la string
	var rp, lp, tlsv any
	if nc != nil {
		ra, rp = splitAddr(nc.RemoteAddr())
		la, lp = splitAddr(nc.LocalAddr())
		tlsv = ""
		if tc, ok := nc.(*tls.Conn); ok {
			st := tc.ConnectionState()
			tlsv = tlsInfo(&st)
		}
	}
	return []any{typ, user, db, "none", state, ra, rp, la, lp, timeOrNil(connect), timeOrNil(request),
		0, 0, closeNeeded, ptr, link, remotePID, tlsv, appName, 0, id}
}

func timeOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// clientPtr and serverPtr stand for PgBouncer's ptr and link (addresses of
// its objects): a client's by its id, a server connection's by its pid.
func clientPtr(id uint32) string  { return "c" + strconv.FormatUint(uint64(id), 10) }
func serverPtr(pid uint32) string { return "s" + strconv.FormatUint(uint64(pid), 10) }

// tlsInfo describes a TLS connection as PgBouncer does: version/cipher.
func tlsInfo(st *tls.ConnectionState) string {
	if st == nil {
		return ""
	}
	v := strings.Replace(tls.VersionName(st.Version), "TLS 1", "TLSv1", 1)
	return v + "/" + tls.CipherSuiteName(st.CipherSuite)
}

func (s *Server) showUsers() *result {
	rs := &result{cols: columns("ssssiiii", "name", "pool_size", "reserve_pool_size", "pool_mode",
		"max_user_connections", "current_connections", "max_user_client_connections", "current_client_connections")}
	for _, u := range s.snapshot().users() {
		// No per-user pool size, reserve, mode or limits: empty, NULL, 0.
		rs.add(u.name, "", "", nil, 0, u.servers, 0, u.clients)
	}
	return rs
}

// userInfo is a row of SHOW USERS: a client role (the token's) or an
// upstream login, with its connections.
type userInfo struct {
	name             string
	servers, clients int
}

func (snap snapshot) users() []userInfo {
	byName := map[string]*userInfo{}
	get := func(name string) *userInfo {
		u := byName[name]
		if u == nil {
			u = &userInfo{name: name}
			byName[name] = u
		}
		return u
	}
	for _, d := range snap.dbs {
		get(d.user).servers += d.stats.Total
	}
	for _, ci := range snap.clients {
		get(ci.role).clients++
	}
	out := make([]userInfo, 0, len(byName))
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		out = append(out, *byName[name])
	}
	return out
}

func (s *Server) showLists() *result {
	snap := s.snapshot()
	pools, servers := 0, 0
	for _, d := range snap.dbs {
		if d.pool != nil {
			pools++
		}
		servers += d.stats.Total
	}
	rs := &result{cols: columns("si", "list", "items")}
	for _, l := range []struct {
		name  string
		items int
	}{
		{"databases", len(snap.dbs)},
		{"users", len(snap.users())},
		{"peers", len(*s.peers.Load())},
		{"pools", pools},
		{"peer_pools", 0}, // cancel requests go to peers without a pool
		{"free_clients", 0},
		{"used_clients", int(s.conns.Load())}, // logged in or logging in
		{"login_clients", len(snap.logins)},
		{"free_servers", 0},
		{"used_servers", servers},
		{"dns_names", 0}, // no DNS cache
		{"dns_zones", 0},
		{"dns_queries", 0},
		{"dns_pending", 0},
	} {
		rs.add(l.name, l.items)
	}
	return rs
}

// showMem has PgBouncer's columns (name, size of one item, items used and
// free, bytes in all) for what pgtoken allocates: the buffers of each
// server connection, and the Go runtime's heap objects and goroutine
// stacks (whose items have no one size: size is the average).
func (s *Server) showMem() *result {
	rs := &result{cols: columns("siiiq", "name", "size", "used", "free", "memtotal")}
	servers := 0
	for _, d := range s.snapshot().dbs {
		servers += d.stats.Total
	}
	perServer := pool.DefaultReadBuffer + pool.DefaultWriteBuffer
	rs.add("server_buffers", perServer, servers, 0, int64(perServer*servers))
	samples := []metrics.Sample{
		{Name: "/gc/heap/objects:objects"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/sched/goroutines:goroutines"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	metrics.Read(samples)
	val := func(i int) int64 {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return int64(samples[i].Value.Uint64())
	}
	for _, m := range []struct {
		name         string
		items, bytes int64
	}{
		{"heap_objects", val(0), val(1)},
		{"goroutine_stacks", val(2), val(3)},
	} {
		size := int64(0)
		if m.items > 0 {
			size = m.bytes / m.items
		}
		rs.add(m.name, size, m.items, 0, m.bytes)
	}
	return rs
}

func splitAddr(a net.Addr) (string, any) {
	if a == nil {
		return "", nil
	}
	return splitHostPort(a.String())
}

// splitHostPort splits host:port; a port that is not a number is NULL.
func splitHostPort(hostport string) (string, any) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return host, nil
	}
	return host, n
}
