package devenv

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestPostgresLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := StartPostgres(ctx, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })

	if err := pg.CreateDatabase(ctx, "Some-DB"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.URL("Some-DB"))
	if err != nil {
		t.Fatal(err)
	}
	var walLevel, db string
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level'), current_database()").Scan(&walLevel, &db); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if walLevel != "logical" || db != "Some-DB" {
		t.Errorf("wal_level, database = %q, %q, want logical, Some-DB", walLevel, db)
	}

	if os.Geteuid() == 0 {
		if uid := postmasterUID(t, pg); uid == 0 {
			t.Errorf("postmaster runs as uid 0, want an unprivileged account")
		}
	}

	if err := pg.Restart(ctx); err != nil {
		t.Fatalf("restart: %v\n%s", err, pg.LogTail(20))
	}
	conn, err = pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	conn.Close(ctx)
	if tail := pg.LogTail(5); !strings.Contains(tail, "ready to accept connections") {
		t.Errorf("LogTail(5) = %q, want the server's ready line", tail)
	}

	if err := pg.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := pg.Stop(); err != nil {
		t.Errorf("second stop: %v, want nil", err)
	}
	if _, err := os.Stat(pg.Dir()); !os.IsNotExist(err) {
		t.Errorf("stat %s after stop: %v, want not exist", pg.Dir(), err)
	}
}

func TestStartPostgresSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := StartPostgres(ctx, PostgresOptions{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var got string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "replica" {
		t.Errorf("wal_level = %q, want replica", got)
	}
}

func TestFindServerBinaries(t *testing.T) {
	t.Setenv("PG_BIN", t.TempDir())
	if _, err := FindServerBinaries(); err == nil || !strings.Contains(err.Error(), "PG_BIN") {
		t.Errorf("FindServerBinaries with an empty PG_BIN dir: err = %v, want one naming PG_BIN", err)
	}
}

func TestAbandonedClusterIsReaped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := StartPostgres(ctx, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	// Pretend the process that started it died: a pid that cannot exist.
	if err := os.WriteFile(filepath.Join(pg.Dir(), "owner.pid"), []byte("2147483647"), 0o644); err != nil {
		t.Fatal(err)
	}
	pg2, err := StartPostgres(ctx, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pg2.Stop()
	if _, err := os.Stat(pg.Dir()); !os.IsNotExist(err) {
		t.Errorf("abandoned cluster dir: stat err = %v, want it removed", err)
	}
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err == nil {
		conn.Close(ctx)
		t.Errorf("abandoned cluster still accepts connections")
	}
}

func TestKafkaReadBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, err := StartKafka()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()

	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs()...), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 50
	for i := range n {
		topic := "a.one"
		if i%2 == 1 {
			topic = "a.two"
		}
		r := &kgo.Record{Topic: topic, Key: []byte(strconv.Itoa(i % 7)), Value: []byte(strconv.Itoa(i))}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "b.other", Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	ends, err := EndOffsets(ctx, k.Addrs(), []string{`^a\.`})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for tp, end := range ends {
		if !strings.HasPrefix(tp.Topic, "a.") {
			t.Errorf("EndOffsets returned %v, which does not match ^a\\.", tp)
		}
		total += end
	}
	if total != n {
		t.Errorf("sum of end offsets = %d, want %d", total, n)
	}

	all, err := ReadAll(ctx, k.Addrs(), []string{`^a\.`})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Errorf("ReadAll read %d records, want %d", len(all), n)
	}

	got, err := ReadRecords(ctx, k.Addrs(), []string{`^b\.other$`}, func(got []*kgo.Record) bool { return len(got) >= 1 })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got[0].Value) != "x" {
		t.Errorf("ReadRecords(b.other) = %d records, want the one produced", len(got))
	}

	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	got, err = ReadRecords(short, k.Addrs(), []string{`^a\.`}, func([]*kgo.Record) bool { return false })
	if err == nil {
		t.Errorf("ReadRecords with an unreachable condition: err = nil, want the context's error")
	}
	if len(got) == 0 {
		t.Errorf("ReadRecords that timed out returned no records, want those read so far")
	}
}

// postmasterUID reads the uid the postmaster runs as from /proc.
func postmasterUID(t *testing.T, pg *Postgres) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pg.Dir(), "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.SplitN(string(b), "\n", 2)[0]
	status, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid, _ := strconv.Atoi(strings.Fields(rest)[0])
			return uid
		}
	}
	t.Fatalf("no Uid line in /proc/%s/status", pid)
	return -1
}
