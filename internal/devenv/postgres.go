package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// dirPrefix names cluster directories, so a later start can find and reap
// the clusters of a process that died without stopping them.
const dirPrefix = "outbox-relay-pg-"

// PostgresOptions tunes StartPostgres. The zero value is what the tests use.
type PostgresOptions struct {
	// BinDir holds initdb and pg_ctl; empty means FindServerBinaries.
	BinDir string
	// Settings are extra postgresql.conf lines, applied after (and so
	// overriding) the defaults; values are written verbatim, so quote
	// strings: {"wal_level": "replica", "log_line_prefix": "'%m '"}.
	Settings map[string]string
}

// defaultSettings make a cluster fit for logical replication tests: many
// slots, loopback only, and no durability (the cluster is thrown away).
// wal_sender_timeout keeps its default of 60s so that keepalive handling is
// tested against the timeout operators run with.
var defaultSettings = [][2]string{
	{"wal_level", "logical"},
	{"max_replication_slots", "50"},
	{"max_wal_senders", "50"},
	{"max_connections", "200"},
	{"listen_addresses", "'127.0.0.1'"},
	{"fsync", "off"},
	{"synchronous_commit", "off"},
	{"full_page_writes", "off"},
	{"logging_collector", "off"},
	{"log_line_prefix", "'%m [%p] %q%u@%d '"},
	{"log_replication_commands", "on"},
	{"lc_messages", "'C'"},
}

// Postgres is a throw-away cluster started from the local server binaries.
// It listens on 127.0.0.1 at a free port and trusts every local connection.
type Postgres struct {
	binDir  string
	dir     string // owned by the server account; holds data/ and the log
	port    int
	account *serverAccount // nil when we are not root

	stopOnce sync.Once
	stopErr  error
}

// StartPostgres initialises and starts a new cluster in a temporary
// directory. When we run as root (as CI does) the server runs as the
// postgres account, or nobody when there is none. The caller must Stop it.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	binDir := opts.BinDir
	if binDir == "" {
		var err error
		if binDir, err = FindServerBinaries(); err != nil {
			return nil, err
		}
	}
	account, err := unprivilegedAccount()
	if err != nil {
		return nil, err
	}
	base := tempBase(account)
	reapAbandoned(base, binDir, account)

	dir, err := os.MkdirTemp(base, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("postgres temp dir: %w", err)
	}
	p := &Postgres{binDir: binDir, dir: dir, account: account}
	if err := p.start(ctx, opts); err != nil {
		tail := p.LogTail(20)
		p.Stop()
		if tail != "" {
			err = fmt.Errorf("%w\nserver log:\n%s", err, tail)
		}
		return nil, err
	}
	return p, nil
}

func (p *Postgres) start(ctx context.Context, opts PostgresOptions) error {
	if err := os.WriteFile(filepath.Join(p.dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	if err := p.account.chown(p.dir); err != nil {
		return err
	}
	if _, err := p.run(ctx, "initdb", "-D", p.dataDir(), "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return err
	}
	settings := append([][2]string(nil), defaultSettings...)
	settings = append(settings, [2]string{"unix_socket_directories", quoteSetting(p.dir)})
	keys := make([]string, 0, len(opts.Settings))
	for k := range opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		settings = append(settings, [2]string{k, opts.Settings[k]})
	}
	if err := p.appendConf(settings); err != nil {
		return err
	}

	// The port is free when we look but may be taken before the server
	// binds it; retry with another one.
	var err error
	for range 3 {
		if p.port, err = freePort(); err != nil {
			return err
		}
		if err = p.appendConf([][2]string{{"port", strconv.Itoa(p.port)}}); err != nil {
			return err
		}
		if _, err = p.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", p.dataDir(), "-l", p.logFile()); err == nil {
			return nil
		}
		if !strings.Contains(p.LogTail(20), "could not bind") {
			return err
		}
	}
	return err
}

// URL is a libpq URL for database db as the superuser postgres.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, url.PathEscape(db))
}

// Port is the TCP port the server listens on at 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// Dir is the cluster's temporary directory (data/ and postgres.log).
func (p *Postgres) Dir() string { return p.dir }

// CreateDatabase creates database name.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("create database %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}

// Restart stops the server (fast mode: sessions, walsenders included, are
// terminated) and starts it again on the same port and data.
func (p *Postgres) Restart(ctx context.Context) error {
	_, err := p.run(ctx, "pg_ctl", "restart", "-w", "-t", "60", "-m", "fast", "-D", p.dataDir(), "-l", p.logFile())
	return err
}

// CrashRestart stops the server as a crash does (pg_ctl stop -m immediate:
// no checkpoint, every backend ended at once) and starts it again, so that
// it recovers from its WAL.
func (p *Postgres) CrashRestart(ctx context.Context) error {
	if _, err := p.run(ctx, "pg_ctl", "stop", "-w", "-t", "60", "-m", "immediate", "-D", p.dataDir()); err != nil {
		return err
	}
	_, err := p.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", p.dataDir(), "-l", p.logFile())
	return err
}

// Stop shuts the server down and removes its directory. Only the first call
// does anything; later calls return the first call's result.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(p.dataDir(), "postmaster.pid")); err == nil {
			_, p.stopErr = p.run(context.Background(), "pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", p.dataDir())
		}
		if err := os.RemoveAll(p.dir); err != nil && p.stopErr == nil {
			p.stopErr = err
		}
	})
	return p.stopErr
}

// LogTail returns the last n lines of the server log, for failure messages.
func (p *Postgres) LogTail(n int) string {
	return tailLines(p.logFile(), n)
}

func (p *Postgres) dataDir() string { return filepath.Join(p.dir, "data") }
func (p *Postgres) logFile() string { return filepath.Join(p.dir, "postgres.log") }

// run runs a server binary as the server account and returns its output.
func (p *Postgres) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runServerBinary(ctx, p.binDir, p.dir, p.account, name, args...)
}

func runServerBinary(ctx context.Context, binDir, dir string, account *serverAccount, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	cmd.Dir = dir // the server account may not be able to enter our working directory
	cmd.Env = serverEnv()
	cmd.SysProcAttr = account.sysProcAttr()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl hands the server's output to the log file, but never let a
	// stray descendant holding our pipe hang us.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// serverEnv is our environment without libpq variables, which would point
// the server tools at another cluster.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C")
}

func (p *Postgres) appendConf(settings [][2]string) error {
	f, err := os.OpenFile(filepath.Join(p.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = %s\n", s[0], s[1])
	}
	_, err = f.WriteString(b.String())
	return errors.Join(err, f.Close())
}

func quoteSetting(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailLines returns the last n lines of a file, reading at most its last MiB.
func tailLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 1 << 20
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		f.Seek(fi.Size()-window, 0)
	}
	var buf bytes.Buffer
	buf.ReadFrom(f)
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
