package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Helpers for the operations tests: the relay's HTTP endpoints,
// its Prometheus exposition, its JSON log lines and `status --json`.

// logEntry is one zerolog line of a relay's stderr, with the fields the
// operations tests look at.
type logEntry struct {
	Level     string    `json:"level"`
	Component string    `json:"component"`
	Message   string    `json:"message"`
	Time      time.Time `json:"time"`
	Addr      string    `json:"addr"`
	LSN       string    `json:"lsn"`
}

// logEntries returns the relay's log lines whose message is message, in
// order. Lines that are not JSON are skipped (checkLogs reports those).
func logEntries(r *relayProcess, message string) []logEntry {
	var out []logEntry
	for line := range strings.SplitSeq(r.stderr.String(), "\n") {
		if !strings.Contains(line, message) {
			continue
		}
		var entry logEntry
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Message == message {
			out = append(out, entry)
		}
	}
	return out
}

// The relay's log messages for the state changes the tests wait for.
const (
	msgServingHTTP    = "serving /metrics, /healthz, /readyz"
	msgLeaderAcquired = "leader lock acquired"
	msgStandingBy     = "another instance leads; standing by"
	msgStreaming      = "streaming"
)

// httpAddr waits until the relay logged the address it serves /metrics,
// /healthz and /readyz on (the harness lets it pick a free port) and
// returns it.
func (e *testEnv) httpAddr(r *relayProcess) string {
	e.t.Helper()
	var addr string
	e.waitFor(30*time.Second, r.name+" to serve HTTP", func() (bool, string) {
		if entries := logEntries(r, msgServingHTTP); len(entries) > 0 {
			addr = entries[0].Addr
		}
		return addr != "", "no " + msgServingHTTP + " log line yet"
	})
	return addr
}

var probeClient = &http.Client{Timeout: 5 * time.Second}

// httpGet fetches http://addr/path and returns the status code and body.
func httpGet(addr, path string) (int, []byte, error) {
	resp, err := probeClient.Get("http://" + addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// readiness is the body of /readyz.
type readiness struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason"`
	Role   string `json:"role"`
}

// readyz fetches /readyz.
func readyz(addr string) (int, readiness, error) {
	code, body, err := httpGet(addr, "/readyz")
	if err != nil {
		return 0, readiness{}, err
	}
	var r readiness
	if err := json.Unmarshal(body, &r); err != nil {
		return code, r, fmt.Errorf("/readyz body %q is not the JSON object {ready, reason, role}: %w", body, err)
	}
	return code, r, nil
}

// metricFamilies is one parsed scrape of /metrics.
type metricFamilies map[string]*dto.MetricFamily

// scrapeMetrics fetches /metrics and parses the whole body as the Prometheus text
// format; body is returned for failure messages and further checks.
func scrapeMetrics(addr string) (metricFamilies, []byte, error) {
	code, body, err := httpGet(addr, "/metrics")
	if err != nil {
		return nil, nil, err
	}
	if code != http.StatusOK {
		return nil, body, fmt.Errorf("/metrics answered %d: %s", code, body)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, body, fmt.Errorf("/metrics is not valid Prometheus text exposition: %w", err)
	}
	return mfs, body, nil
}

// mustScrape is scrapeMetrics that fails the test on error.
func (e *testEnv) mustScrape(addr string) metricFamilies {
	e.t.Helper()
	mfs, _, err := scrapeMetrics(addr)
	if err != nil {
		e.t.Fatal(err)
	}
	return mfs
}

// value returns the value of the series of family name whose labels
// include labels (name, value pairs): the counter, gauge or untyped value,
// or a histogram's sample count. ok is false when there is no such series.
func (m metricFamilies) value(name string, labels ...string) (v float64, ok bool) {
	mf := m[name]
	if mf == nil {
		return 0, false
	}
	for _, metric := range mf.GetMetric() {
		if !hasLabels(metric, labels) {
			continue
		}
		switch {
		case metric.Counter != nil:
			return metric.Counter.GetValue(), true
		case metric.Gauge != nil:
			return metric.Gauge.GetValue(), true
		case metric.Histogram != nil:
			return float64(metric.Histogram.GetSampleCount()), true
		case metric.Untyped != nil:
			return metric.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// sum adds the values of every series of family name (0 when it has none).
func (m metricFamilies) sum(name string) float64 {
	total := 0.0
	for _, metric := range m[name].GetMetric() {
		switch {
		case metric.Counter != nil:
			total += metric.Counter.GetValue()
		case metric.Gauge != nil:
			total += metric.Gauge.GetValue()
		}
	}
	return total
}

func hasLabels(metric *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range metric.GetLabel() {
			found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// describe lists the family's series, for failure messages.
func (m metricFamilies) describe(name string) string {
	mf := m[name]
	if mf == nil {
		return name + ": absent"
	}
	var series []string
	for _, metric := range mf.GetMetric() {
		var labels []string
		for _, lp := range metric.GetLabel() {
			labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
		}
		v, _ := metricFamilies{name: &dto.MetricFamily{Type: mf.Type, Metric: []*dto.Metric{metric}}}.value(name)
		series = append(series, fmt.Sprintf("{%s} %g", strings.Join(labels, ","), v))
	}
	sort.Strings(series)
	return fmt.Sprintf("%s (%s): %s", name, mf.GetType(), strings.Join(series, " "))
}

// gauge scrapes addr and returns the value of a series, failing the test
// when the scrape fails or the series is absent.
func (e *testEnv) gauge(addr, name string, labels ...string) float64 {
	e.t.Helper()
	mfs := e.mustScrape(addr)
	v, ok := mfs.value(name, labels...)
	if !ok {
		e.t.Fatalf("%s absent from /metrics", name)
	}
	return v
}

// statusReport is the part of `outbox-relay status --json` the tests read;
// the field names are the command's contract.
type statusReport struct {
	CurrentWALLSN         string   `json:"current_wal_lsn"`
	Slot                  string   `json:"slot"`
	SlotExists            bool     `json:"slot_exists"`
	Active                bool     `json:"active"`
	ActivePID             *int32   `json:"active_pid"`
	HolderApplicationName *string  `json:"holder_application_name"`
	ConfirmedFlushLSN     *string  `json:"confirmed_flush_lsn"`
	LagBytes              *int64   `json:"lag_bytes"`
	LagSeconds            *float64 `json:"lag_seconds"`
	LagSource             string   `json:"lag_source"`
	WALStatus             string   `json:"wal_status"`
	SafeWALSize           *int64   `json:"safe_wal_size"`
	RetainedBytes         *int64   `json:"retained_bytes"`
	Publication           string   `json:"publication"`
	PublicationExists     bool     `json:"publication_exists"`
	Table                 string   `json:"table"`
	TableExists           bool     `json:"table_exists"`
	UnackedRows           *int64   `json:"unacked_rows"`
	OldestUnackedSeconds  *float64 `json:"oldest_unacked_seconds"`
	Warnings              []string `json:"warnings"`
}

// runStatusJSON runs `outbox-relay status --json` with the environment env and
// returns its exit code and decoded report; stdout must be one JSON object
// whatever the exit code, except 1 (an error talking to Postgres).
func runStatusJSON(t *testing.T, env []string) (int, statusReport, string) {
	t.Helper()
	code, stdout, stderr := runRelay(t, env, time.Minute, "status", "--json")
	var r statusReport
	if code != 1 {
		if err := json.Unmarshal([]byte(stdout), &r); err != nil {
			t.Fatalf("status --json (exit %d) printed no JSON object: %v\nstdout:\n%s\nstderr:\n%s", code, err, stdout, stderr)
		}
	}
	return code, r, stdout + stderr
}

// orNil is *p, or nil when p is nil, for printing optional fields.
func orNil[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
