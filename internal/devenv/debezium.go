package devenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// debeziumDirPrefix names Kafka Connect directories, so that a later start
// can find and reap the workers of a process that died without closing them.
const debeziumDirPrefix = "outbox-relay-debezium-"

// DebeziumJarsEnv names a directory of Debezium's and Kafka Connect's
// runtime jars to use instead of the cached Maven download.
const DebeziumJarsEnv = "OUTBOX_RELAY_DEBEZIUM_JARS"

// debeziumJars are Debezium's PostgreSQL connector (with the outbox event
// router) and Kafka Connect's runtime, in a folder of their own: they bring
// kafka-clients 4.3, the broker 4.4.
var debeziumJars = jarSet{
	name:            "debezium",
	pom:             "java/debezium/pom.xml",
	versionProperty: "debezium.version",
	env:             DebeziumJarsEnv,
	marker:          "debezium-connector-postgres-*.jar",
}

// DebeziumJars returns a directory holding the runtime jars named in
// java/debezium/pom.xml, fetched and cached as ApacheKafkaJars does (under
// outbox-relay/debezium-<version>-<pom hash>); $OUTBOX_RELAY_DEBEZIUM_JARS,
// when set, is used as is.
func DebeziumJars(ctx context.Context) (string, error) {
	return debeziumJars.dir(ctx)
}

// DebeziumAvailable says why Debezium cannot run here (nil when java and
// either mvn or $OUTBOX_RELAY_DEBEZIUM_JARS are present).
func DebeziumAvailable() error {
	return debeziumJars.available()
}

// Converters of DebeziumOptions.Converter.
const (
	// DebeziumStringConverter writes key and value with Kafka's
	// StringConverter: the key is aggregateid's text, the value the payload
	// column's text as Postgres prints it (a jsonb payload stays the JSON
	// text the relay sends too).
	DebeziumStringConverter = "string"
	// DebeziumJSONConverter writes them with JsonConverter, schemas off,
	// and table.expand.json.payload=true, the Debezium documentation's
	// recipe for JSON payloads: a jsonb payload is parsed and written
	// again as JSON (re-serialised by Jackson), the key as a JSON string.
	DebeziumJSONConverter = "json"
)

// DebeziumOptions tunes StartDebezium. PostgresURL, Brokers, Slot and
// Publication are required.
type DebeziumOptions struct {
	// PostgresURL is a libpq URL of the database holding the outbox
	// (host 127.0.0.1); its user needs REPLICATION.
	PostgresURL string
	// Table is the outbox table, schema-qualified; empty means
	// public.outbox. Its columns are the relay's defaults (id,
	// aggregatetype, aggregateid, type, payload).
	Table string
	// Slot and Publication are Debezium's own; the publication is created
	// (for Table only) when missing, the slot too. Close drops the slot.
	Slot, Publication string
	// SnapshotMode is snapshot.mode; empty means no_data (stream only
	// what is committed after the slot was made).
	SnapshotMode string
	// Brokers are the bootstrap addresses Connect produces to (127.0.0.1).
	Brokers []string
	// Converter is DebeziumStringConverter (the default) or
	// DebeziumJSONConverter.
	Converter string
	// Heap is the JVM's -Xmx; empty means 256m.
	Heap string
	// JVMArgs are appended to the defaults (-Xmx, -XX:+UseSerialGC), so
	// they override them (-XX:-UseSerialGC -XX:+UseG1GC for G1).
	JVMArgs []string
	// LogDir receives connect.log (Connect's and Debezium's log) and
	// connect.out (the JVM's stdout and stderr); empty means the worker's
	// temporary directory, removed by Close.
	LogDir string
	// Connector and Worker are extra connector and worker properties,
	// applied after (and so overriding) the defaults.
	Connector, Worker map[string]string
}

// Debezium is Debezium's PostgreSQL connector with the outbox event router
// (io.debezium.transforms.outbox.EventRouter), run as its users run it: by
// Kafka Connect standalone, one java process on loopback ports.
type Debezium struct {
	opts    DebeziumOptions
	dir     string // removed by Close
	logDir  string
	restURL string
	// worker and connector are the properties Connect runs with.
	worker, connector map[string]string
	cmd               *exec.Cmd
	done              chan struct{} // closed when cmd exited

	closeOnce sync.Once
	closeErr  error
}

// debeziumConnectorName is the connector's name in the worker.
const debeziumConnectorName = "outbox"

// StartDebezium starts Kafka Connect standalone with the outbox connector
// and returns once the connector's task is RUNNING (asked through the
// Connect REST API) and its slot is active. The caller must Close it.
func StartDebezium(ctx context.Context, opts DebeziumOptions) (*Debezium, error) {
	if opts.Table == "" {
		opts.Table = "public.outbox"
	}
	if opts.SnapshotMode == "" {
		opts.SnapshotMode = "no_data"
	}
	if opts.Converter == "" {
		opts.Converter = DebeziumStringConverter
	}
	if opts.Heap == "" {
		opts.Heap = "256m"
	}
	if opts.Slot == "" || opts.Publication == "" {
		return nil, errors.New("debezium: Slot and Publication are required")
	}
	if !strings.Contains(opts.Table, ".") {
		return nil, fmt.Errorf("debezium: table %q: want schema.table", opts.Table)
	}
	for _, b := range opts.Brokers {
		if host, _, err := net.SplitHostPort(b); err != nil || host != "127.0.0.1" {
			return nil, fmt.Errorf("debezium: broker %q: want 127.0.0.1:port", b)
		}
	}
	if len(opts.Brokers) == 0 {
		return nil, errors.New("debezium: no brokers")
	}
	pg, err := pgconn.ParseConfig(opts.PostgresURL)
	if err != nil {
		return nil, fmt.Errorf("debezium: postgres url: %w", err)
	}
	if pg.Host != "127.0.0.1" {
		return nil, fmt.Errorf("debezium: postgres host %q: want 127.0.0.1", pg.Host)
	}
	java, jars, dir, err := newJavaWorkspace(ctx, debeziumJars, debeziumDirPrefix)
	if err != nil {
		return nil, err
	}
	d := &Debezium{opts: opts, dir: dir, logDir: opts.LogDir}
	if d.logDir == "" {
		d.logDir = filepath.Join(dir, "logs")
	}
	if err := d.start(ctx, java, jars, pg); err != nil {
		tail := d.LogTail(40)
		d.Close()
		return nil, fmt.Errorf("%w\nconnect log:\n%s", err, tail)
	}
	return d, nil
}

func (d *Debezium) start(ctx context.Context, java, jars string, pg *pgconn.Config) error {
	if err := os.WriteFile(filepath.Join(d.dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("debezium: %w", err)
	}
	// The process's files sit in a subdirectory, which its command line
	// names: reapAbandonedJava recognises it by that.
	work := filepath.Join(d.dir, "connect")
	for _, dir := range []string{work, d.logDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("debezium: %w", err)
		}
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	d.restURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	worker := filepath.Join(work, "worker.properties")
	connector := filepath.Join(work, "connector.properties")
	log4j := filepath.Join(work, "log4j2.xml")
	d.worker = d.workerProperties(ports[0], filepath.Join(work, "connect.offsets"))
	d.connector = d.connectorProperties(pg)
	files := map[string]string{
		worker:    propertiesText(d.worker),
		connector: propertiesText(d.connector),
		log4j:     log4jConfig(filepath.Join(d.logDir, "connect.log")),
	}
	for name, text := range files {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			return fmt.Errorf("debezium: %w", err)
		}
	}

	out, err := os.OpenFile(filepath.Join(d.logDir, "connect.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("debezium: %w", err)
	}
	defer out.Close()
	args := []string{"-Xmx" + d.opts.Heap, "-XX:+UseSerialGC", "-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + log4j}
	args = append(append(args, d.opts.JVMArgs...), "-cp", filepath.Join(jars, "*"),
		"org.apache.kafka.connect.cli.ConnectStandalone", worker, connector)
	cmd := exec.Command(java, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("debezium: start kafka connect: %w", err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	if err := os.WriteFile(filepath.Join(work, "java.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return fmt.Errorf("debezium: %w", err)
	}
	return d.waitReady(ctx)
}

// workerProperties are Connect standalone's worker settings: the REST API
// on a loopback port, offsets in a file, and the producer as Connect
// configures it (acks=all; named here so that it stays so).
func (d *Debezium) workerProperties(restPort int, offsets string) map[string]string {
	c := map[string]string{
		"bootstrap.servers":                 strings.Join(d.opts.Brokers, ","),
		"listeners":                         fmt.Sprintf("http://127.0.0.1:%d", restPort),
		"rest.advertised.host.name":         "127.0.0.1",
		"offset.storage.file.filename":      offsets,
		"offset.flush.interval.ms":          "1000",
		"plugin.discovery":                  "service_load",
		"producer.acks":                     "all",
		"header.converter":                  "org.apache.kafka.connect.storage.SimpleHeaderConverter",
		"key.converter":                     "org.apache.kafka.connect.storage.StringConverter",
		"value.converter":                   "org.apache.kafka.connect.storage.StringConverter",
		"task.shutdown.graceful.timeout.ms": "5000",
	}
	if d.opts.Converter == DebeziumJSONConverter {
		c["key.converter"] = "org.apache.kafka.connect.json.JsonConverter"
		c["key.converter.schemas.enable"] = "false"
		c["value.converter"] = "org.apache.kafka.connect.json.JsonConverter"
		c["value.converter.schemas.enable"] = "false"
	}
	maps.Copy(c, d.opts.Worker)
	return c
}

// connectorProperties configure the PostgreSQL connector (pgoutput, its
// own slot and publication) and the outbox event router on the relay's
// default columns, routing by aggregatetype to outbox.event.<value>.
func (d *Debezium) connectorProperties(pg *pgconn.Config) map[string]string {
	c := map[string]string{
		"name":                                    debeziumConnectorName,
		"connector.class":                         "io.debezium.connector.postgresql.PostgresConnector",
		"tasks.max":                               "1",
		"database.hostname":                       pg.Host,
		"database.port":                           strconv.Itoa(int(pg.Port)),
		"database.user":                           pg.User,
		"database.password":                       pg.Password,
		"database.dbname":                         pg.Database,
		"topic.prefix":                            "outbox_dbz",
		"plugin.name":                             "pgoutput",
		"slot.name":                               d.opts.Slot,
		"publication.name":                        d.opts.Publication,
		"publication.autocreate.mode":             "filtered",
		"table.include.list":                      d.opts.Table,
		"snapshot.mode":                           d.opts.SnapshotMode,
		"tombstones.on.delete":                    "false",
		"transforms":                              "outbox",
		"transforms.outbox.type":                  "io.debezium.transforms.outbox.EventRouter",
		"transforms.outbox.table.field.event.id":  "id",
		"transforms.outbox.table.field.event.key": "aggregateid",
		"transforms.outbox.table.field.event.payload": "payload",
		"transforms.outbox.route.by.field":            "aggregatetype",
		"transforms.outbox.route.topic.replacement":   "outbox.event.${routedByValue}",
		// The relay writes the type column to a "type" header.
		"transforms.outbox.table.fields.additional.placement": "type:header:type",
	}
	if d.opts.Converter == DebeziumJSONConverter {
		c["transforms.outbox.table.expand.json.payload"] = "true"
	}
	maps.Copy(c, d.opts.Connector)
	return c
}

// propertiesText writes c as a .properties file, keys sorted. Values
// holding backslashes are escaped as the format requires.
func propertiesText(c map[string]string) string {
	var b strings.Builder
	for _, key := range slices.Sorted(maps.Keys(c)) {
		fmt.Fprintf(&b, "%s=%s\n", key, strings.ReplaceAll(c[key], `\`, `\\`))
	}
	return b.String()
}

// ConnectorStatus is what GET /connectors/<name>/status answers.
type ConnectorStatus struct {
	Connector struct {
		State string `json:"state"`
		Trace string `json:"trace"`
	} `json:"connector"`
	Tasks []struct {
		ID    int    `json:"id"`
		State string `json:"state"`
		Trace string `json:"trace"`
	} `json:"tasks"`
}

// waitReady polls the REST API until the connector and its task are
// RUNNING, then the database until the slot is active (the task streams).
func (d *Debezium) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	last := "no answer from the REST API"
	for {
		select {
		case <-d.done:
			return fmt.Errorf("debezium: kafka connect exited while starting (%s)", last)
		case <-ctx.Done():
			return fmt.Errorf("debezium: waiting for the connector to run: %w (%s)", context.Cause(ctx), last)
		case <-time.After(200 * time.Millisecond):
		}
		st, err := d.Status(ctx)
		if err != nil {
			last = err.Error()
			continue
		}
		if st.Connector.State == "FAILED" {
			return fmt.Errorf("debezium: connector failed: %s", firstLines(st.Connector.Trace, 8))
		}
		if len(st.Tasks) > 0 && st.Tasks[0].State == "FAILED" {
			return fmt.Errorf("debezium: task failed: %s", firstLines(st.Tasks[0].Trace, 8))
		}
		if st.Connector.State != "RUNNING" || len(st.Tasks) == 0 || st.Tasks[0].State != "RUNNING" {
			last = fmt.Sprintf("connector %s, %d tasks", st.Connector.State, len(st.Tasks))
			continue
		}
		active, err := d.slotActive(ctx)
		if err != nil {
			last = err.Error()
			continue
		}
		if active {
			return nil
		}
		last = fmt.Sprintf("task RUNNING, slot %q not active yet", d.opts.Slot)
	}
}

// Status asks the Connect REST API for the connector's and its task's
// state.
func (d *Debezium) Status(ctx context.Context) (ConnectorStatus, error) {
	var st ConnectorStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.restURL+"/connectors/"+debeziumConnectorName+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("connector status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("connector status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("connector status: %w", err)
	}
	return st, nil
}

// slotActive says whether Debezium's slot exists and a walsender streams
// from it.
func (d *Debezium) slotActive(ctx context.Context) (bool, error) {
	conn, err := pgx.Connect(ctx, d.opts.PostgresURL)
	if err != nil {
		return false, fmt.Errorf("slot %q: %w", d.opts.Slot, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var active bool
	err = conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", d.opts.Slot).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("slot %q: %w", d.opts.Slot, err)
	}
	return active, nil
}

// RouterSettings are the settings that decide what a record looks like:
// the router's (transforms.*), the converters, plugin.name and
// snapshot.mode.
func (d *Debezium) RouterSettings() map[string]string {
	c := make(map[string]string)
	for k, v := range d.connector {
		if strings.HasPrefix(k, "transforms") || k == "plugin.name" || k == "snapshot.mode" || k == "tombstones.on.delete" {
			c[k] = v
		}
	}
	for k, v := range d.worker {
		if strings.Contains(k, "converter") || k == "producer.acks" {
			c[k] = v
		}
	}
	return c
}

// Exited says whether Kafka Connect's process has ended.
func (d *Debezium) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Pid is the Kafka Connect JVM's process id (for CPU and memory figures).
func (d *Debezium) Pid() int { return d.cmd.Process.Pid }

// LogTail returns the last n lines of Connect's log and output.
func (d *Debezium) LogTail(n int) string {
	var b strings.Builder
	for _, name := range []string{"connect.log", "connect.out"} {
		if tail := tailLines(filepath.Join(d.logDir, name), n); tail != "" {
			b.WriteString(tail + "\n")
		}
	}
	return b.String()
}

// Close stops Kafka Connect (SIGTERM, SIGKILL after 20s), drops the slot,
// whose position would otherwise pin WAL, and removes the worker's
// directory (LogDir stays when it was given). The publication stays. Only
// the first call does anything; later calls return its result.
func (d *Debezium) Close() error {
	d.closeOnce.Do(func() {
		if d.cmd != nil {
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(20 * time.Second):
				d.cmd.Process.Kill()
				<-d.done
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.closeErr = dropSlot(ctx, d.opts.PostgresURL, d.opts.Slot)
		os.RemoveAll(d.dir)
	})
	return d.closeErr
}

// dropSlot drops slot once no walsender holds it any more (the one of a
// process that just ended may take a moment to go); a missing slot is fine.
func dropSlot(ctx context.Context, url, slot string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("drop slot %q: %w", slot, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)
		var pgErr *pgconn.PgError
		if err == nil {
			return nil
		}
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use: still active
			return fmt.Errorf("drop slot %q: %w", slot, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop slot %q: %w", slot, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
