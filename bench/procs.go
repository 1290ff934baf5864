package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// daemon is a long-running child (pgtoken or PgBouncer) with its output in
// a log file.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	port    int
	// metricsPort serves pgtoken's /metrics and /debug/sessions (0: none).
	metricsPort int
	done        chan struct{}
	waitErr     error // how the process ended; set before done closes
}

// startDaemon starts cmd in its own process group (so a Ctrl-C at the
// terminal reaches only the harness, which then stops it in order) with
// SIGKILL as its parent-death signal, and waits until it accepts TCP
// connections on 127.0.0.1:port.
func startDaemon(name string, cmd *exec.Cmd, logPath string, port int, cred *syscall.Credential) (*daemon, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, logPath: logPath, port: port, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		if d.waitErr == nil {
			d.waitErr = errors.New("exit status 0")
		}
		close(d.done)
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("%s exited at startup (%w):\n%s", name, d.waitErr, d.logTail(20))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = d.stop()
			return nil, fmt.Errorf("%s did not listen on %s within 20s:\n%s", name, addr, d.logTail(20))
		}
	}
}

// pid is the daemon's process id.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// alive reports whether the process still runs.
func (d *daemon) alive() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to 30 seconds, then kills the process.
func (d *daemon) stop() error {
	if !d.alive() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(30 * time.Second):
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	return fmt.Errorf("%s did not stop within 30s of SIGTERM and was killed", d.name)
}

// logTail returns the last n lines of the daemon's log.
func (d *daemon) logTail(n int) string {
	return fileTail(d.logPath, n)
}

// fileTail returns the last n lines of a file (reading at most 256 KiB).
func fileTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	off := max(fi.Size()-256<<10, 0)
	b := make([]byte, fi.Size()-off)
	k, _ := f.ReadAt(b, off)
	lines := strings.Split(strings.TrimRight(string(b[:k]), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cpuSeconds returns the user plus system CPU time a process has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time: %w", err)
	}
	// The command name (field 2) may hold spaces; fields after it follow
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("cpu time: malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("cpu time: short /proc stat")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu time: %w", err)
	}
	return (ut + st) / clockTicks, nil
}

// statusKB returns a "kB" field of /proc/PID/status, e.g. VmRSS or VmHWM.
func statusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		v := strings.Fields(rest)
		if len(v) == 0 {
			break
		}
		return strconv.ParseInt(v[0], 10, 64)
	}
	return 0, fmt.Errorf("%s not found in /proc/%d/status", field, pid)
}

// fdLimit returns the soft and hard RLIMIT_NOFILE of a process, from
// /proc/PID/limits.
func fdLimit(pid int) (soft, hard string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "", "", fmt.Errorf("limits: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(strings.TrimPrefix(line, "Max open files"))
			if len(f) >= 2 {
				return f[0], f[1], nil
			}
		}
	}
	return "", "", errors.New("limits: no Max open files line")
}

// rssSampler records the largest VmRSS of a process seen while it runs.
type rssSampler struct {
	pid    int
	stopCh chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	maxKB  int64
}

// sampleRSS starts sampling VmRSS of pid every 50ms until stop.
func sampleRSS(pid int) *rssSampler {
	s := &rssSampler{pid: pid, stopCh: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			s.take()
			select {
			case <-s.stopCh:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) take() {
	kb, err := statusKB(s.pid, "VmRSS")
	if err != nil {
		return
	}
	s.mu.Lock()
	s.maxKB = max(s.maxKB, kb)
	s.mu.Unlock()
}

// stop ends sampling and returns the largest VmRSS seen, in kB.
func (s *rssSampler) stop() int64 {
	close(s.stopCh)
	s.wg.Wait()
	s.take()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxKB
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// osUser is an OS account to run a child as.
type osUser struct {
	uid, gid uint32
}

// postgresUser returns the credential of the postgres OS user when running
// as root (PgBouncer, like Postgres, refuses to run as root), else nil.
func postgresUser() (*syscall.Credential, *osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, nil, fmt.Errorf("running as root but there is no postgres OS user: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, fmt.Errorf("postgres OS user: %w", err)
	}
	ou := &osUser{uid: uint32(uid), gid: uint32(gid)}
	return &syscall.Credential{Uid: ou.uid, Gid: ou.gid, Groups: []uint32{}}, ou, nil
}

// runCmd runs a command to completion and returns its combined output.
func runCmd(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		return buf.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(buf.String()))
	}
	return buf.String(), nil
}

// cleanEnv is the harness's environment without PG* variables, which
// would redirect pgbench and psql.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// cpuTimes returns the busy and total jiffies of all CPUs from /proc/stat.
func cpuTimes() (busy, total float64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("cpu times: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, errors.New("cpu times: malformed /proc/stat")
	}
	for i, v := range f[1:] {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("cpu times: %w", err)
		}
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy, total, nil
}

// machineBusy returns the fraction of all CPUs busy during d. Measured
// between runs, when the harness's own processes idle, it is the load of
// whatever else runs on the machine.
func machineBusy(d time.Duration) (float64, error) {
	b0, t0, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	b1, t1, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	if t1 <= t0 {
		return 0, nil
	}
	return (b1 - b0) / (t1 - t0), nil
}
