package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// report is everything a run measured; markdown and JSON show the same.
type report struct {
	Machine Machine           `json:"machine"`
	Options map[string]string `json:"options"`
	Backlog *BacklogResult    `json:"backlog_drain,omitempty"`
	Live    []LiveResult      `json:"live,omitempty"`
	Large   *LargeResult      `json:"large_transaction,omitempty"`
}

// Machine describes where and when the figures were taken.
type Machine struct {
	CPU        string            `json:"cpu"`
	Cores      int               `json:"cores"`
	RAMGiB     float64           `json:"ram_gib"`
	Kernel     string            `json:"kernel"`
	Postgres   string            `json:"postgres"`
	PGSettings map[string]string `json:"postgres_settings"`
	Go         string            `json:"go"`
	RelayGo    string            `json:"relay_built_with"`
	Relay      string            `json:"relay_version"`
	// Broker names the broker every figure comes from; Kafka describes its setup.
	Broker    string `json:"broker"`
	Kafka     string `json:"kafka"`
	Date      string `json:"date"`
	Command   string `json:"command"`
	LoadStart string `json:"load_average_start"`
	LoadEnd   string `json:"load_average_end"`
	Duration  string `json:"duration"`
}

func (b *bench) machine(ctx context.Context) Machine {
	m := Machine{
		CPU:       cpuModel(),
		Cores:     runtime.NumCPU(),
		RAMGiB:    float64(memTotalKB()) / (1 << 20),
		Kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		Go:        runtime.Version(),
		Broker:    b.broker.name(),
		Kafka:     b.broker.details(),
		Date:      time.Now().UTC().Format("2006-01-02 15:04 MST"),
		Command:   "go run ./cmd/outbox-bench " + strings.Join(os.Args[1:], " "),
		LoadStart: loadAverage(),
	}
	if bi, err := buildinfo.ReadFile(b.o.relayBin); err == nil {
		m.RelayGo = bi.GoVersion
	}
	if out, err := exec.CommandContext(ctx, b.o.relayBin, "version").Output(); err == nil {
		m.Relay = strings.TrimSpace(string(out))
	}
	if conn, err := pgx.Connect(ctx, b.pg.URL("postgres")); err == nil {
		conn.QueryRow(ctx, "SHOW server_version").Scan(&m.Postgres)
		m.PGSettings = map[string]string{}
		for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "wal_level",
			"max_wal_size", "logical_decoding_work_mem", "wal_sender_timeout"} {
			var v string
			if conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v) == nil {
				m.PGSettings[name] = v
			}
		}
		conn.Close(ctx)
	}
	return m
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func cpuModel() string {
	for line := range strings.SplitSeq(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for line := range strings.SplitSeq(string(out), "\n") {
			if v, ok := strings.CutPrefix(line, "Model name:"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

func memTotalKB() int64 {
	for line := range strings.SplitSeq(readFile("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// loadAverage is /proc/loadavg's 1, 5 and 15 minute figures.
func loadAverage() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// markdown renders the report as BENCHMARKS.md-ready sections.
func (r *report) markdown() string {
	var w strings.Builder
	m := r.Machine
	fmt.Fprintf(&w, "## Machine and run\n\nbroker: %s\n\n| | |\n|---|---|\n", m.Broker)
	fmt.Fprintf(&w, "| Date | %s (the run took %s) |\n", m.Date, m.Duration)
	fmt.Fprintf(&w, "| Command | `%s` |\n", m.Command)
	fmt.Fprintf(&w, "| CPU | %s, %d cores |\n", m.CPU, m.Cores)
	fmt.Fprintf(&w, "| RAM | %.1f GiB |\n", m.RAMGiB)
	fmt.Fprintf(&w, "| Kernel | Linux %s |\n", m.Kernel)
	fmt.Fprintf(&w, "| Load average (1/5/15 min) | %s at the start, %s at the end |\n", m.LoadStart, m.LoadEnd)
	fmt.Fprintf(&w, "| PostgreSQL | %s, throw-away cluster from the local binaries: %s |\n", m.Postgres, settingsText(m.PGSettings))
	fmt.Fprintf(&w, "| Kafka | %s |\n", m.Kafka)
	fmt.Fprintf(&w, "| Go | %s (relay built with %s) |\n", m.Go, m.RelayGo)
	fmt.Fprintf(&w, "| Relay | %s |\n\n", m.Relay)
	if r.Backlog != nil {
		r.backlogMarkdown(&w)
	}
	if len(r.Live) > 0 {
		r.liveMarkdown(&w)
	}
	if r.Large != nil {
		r.largeMarkdown(&w)
	}
	return w.String()
}

func settingsText(s map[string]string) string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+s[k])
	}
	return strings.Join(parts, ", ")
}

// met renders whether a target was reached.
func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// num formats n with thousands separators.
func num(n float64) string {
	s := strconv.FormatInt(int64(n+0.5), 10)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func (r *report) backlogMarkdown(w *strings.Builder) {
	bl := r.Backlog
	first := bl.Runs[0]
	fmt.Fprintf(w, "## 1. Backlog drain\n\nbroker: %s\n\n", r.Machine.Broker)
	fmt.Fprintf(w, "Setup: %s outbox rows (jsonb payload ≈ %.0f B, 1,000 keys), %d rows per transaction, written "+
		"while no reader streams the slot (%.0f MB of WAL). Each reader drains the same backlog in a fresh database; "+
		"the readers take turns, %d rounds, and the tables show medians. "+
		"pg_recvlogical: a slot of its own on the relay's publication, `-o proto_version=1`, `-f /dev/null`, "+
		"`--endpos` = `pg_current_wal_lsn()` after the inserts. Relay: timed from its process start until every "+
		"record is acked by Kafka and the slot's `confirmed_flush_lsn` ≥ that position; `STATUS_INTERVAL=%s` "+
		"(so confirming does not add a status period to a run of seconds), every other setting default. "+
		"Reader and walsender CPU are CPU seconds over the run; cores busy splits the machine's CPU "+
		"(2 cores = 2.00) between the reader, every process of the Postgres cluster (walsender and backends), this "+
		"benchmark process (kfake included when it is the broker), the broker's own processes (the Apache Kafka JVM) "+
		"and everything else on the machine. "+debeziumDrainSetup+r.debeziumOverrides()+" Max in-flight is "+
		"the largest `outbox_relay_inflight_bytes` sampled (every 50 ms): at the cap (64 MiB = 67.1 MB) the stream "+
		"waits for acks.",
		num(float64(bl.Rows)), first.PayloadBytes, bl.TxnRows, float64(first.WALBytes)/1e6, bl.Repeats, bl.StatusInterval)
	if bl.Profiled {
		fmt.Fprintf(w, " **Profiled run** (`-profile`): the relay's figures of round 1 include the CPU profiler's overhead.")
	}
	recv := bl.reader(readerRecvlogical)
	fmt.Fprintf(w, "\n\n| Reader | Drain time | Events/s (min–max) | × pg_recvlogical | All in Kafka at | Reader CPU | Reader CPU / 100k events | Walsender CPU | Cores busy: reader / Postgres / bench / broker / other | Max in-flight | Peak RSS | Records in Kafka |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range bl.Readers {
		kafkaAt, inKafka, inflight, rss := "—", "—", "—", "—"
		if s.KafkaSeconds > 0 {
			kafkaAt = fmt.Sprintf("%.2f s", s.KafkaSeconds)
			inKafka = num(float64(s.RecordsInKafka))
		}
		if s.MaxInflightMB > 0 {
			inflight = fmt.Sprintf("%.1f MB", s.MaxInflightMB)
		}
		if s.PeakRSSMB > 0 {
			rss = fmt.Sprintf("%.0f MB", s.PeakRSSMB)
		}
		fmt.Fprintf(w, "| %s | %.2f s | %s (%s–%s) | %.2f | %s | %.1f s | %.2f s | %.1f s | %s | %s | %s | %s |\n",
			s.Reader, s.Seconds, num(s.EventsPerSec), num(s.MinEventsPerSec), num(s.MaxEventsPerSec),
			ratio(s.EventsPerSec, recv.EventsPerSec), kafkaAt, s.ReaderCPU, perHundredK(s.ReaderCPU, float64(bl.Rows)),
			s.WalsenderCPU, s.CPU, inflight, rss, inKafka)
	}
	none := bl.reader(readerRelayNone)
	fmt.Fprintf(w, "\n| Target | Measured | Met |\n|---|---:|:-:|\n")
	fmt.Fprintf(w, "| relay (none) ≥ 0.9 × pg_recvlogical | %.2f × | %s |\n", bl.NoneVsRecvlogical, met(bl.NoneVsRecvlogical >= 0.9))
	fmt.Fprintf(w, "| relay (none) ≥ 60,000 events/s | %s events/s | %s |\n", num(none.EventsPerSec), met(none.EventsPerSec >= 60000))
	deleteVsNone := ratio(1, bl.DeleteTimeVsNone) // events/s of delete over none: the same backlog
	fmt.Fprintf(w, "| relay (delete) ≥ 0.75 × relay (none) events/s | %.2f × | %s |\n", deleteVsNone, met(deleteVsNone >= 0.75))
	fmt.Fprintf(w, "| relay (delete) vs pg_recvlogical (no target) | %.2f × | |\n", bl.DeleteVsRecvlogical)
	if dbz := bl.reader(readerDebezium); dbz.StartSeconds > 0 {
		fmt.Fprintf(w, "| Debezium's start (JVM start until the task streams), part of its drain time (no target) | %.2f s | |\n", dbz.StartSeconds)
	}
	if bl.NoneVsDebezium > 0 {
		fmt.Fprintf(w, "| relay (none) ≥ 3 × Debezium | %.2f × | %s |\n", bl.NoneVsDebezium, met(bl.NoneVsDebezium >= 3))
		fmt.Fprintf(w, "| relay (none) peak RSS ≤ 1/4 of Debezium's | %.2f × | %s |\n", bl.RSSVsDebezium, met(bl.RSSVsDebezium > 0 && bl.RSSVsDebezium <= 0.25))
	}
	fmt.Fprintf(w, "\n<details><summary>Every run</summary>\n\n| Round | Reader | Drain time | Events/s | Reader CPU | Walsender CPU | Cores busy: reader / Postgres / bench / broker / other |\n|---:|---|---:|---:|---:|---:|---:|\n")
	for _, run := range bl.Runs {
		fmt.Fprintf(w, "| %d | %s | %.2f s | %s | %.1f s | %.1f s | %s |\n",
			run.Repeat, run.Reader, run.Seconds, num(run.EventsPerSec), run.ReaderCPU, run.WalsenderCPU, run.CPU)
	}
	fmt.Fprintf(w, "\n</details>\n")
	writeStalls(w, bl.Stalls)
	writeProfiles(w, "Profiles of the relay during the drains of round 1 (CPU, allocations since start, heap at the end):", bl.Profiles)
	fmt.Fprintln(w)
}

func (r *report) liveMarkdown(w *strings.Builder) {
	var relays, pollers []LiveResult
	others := map[string][]LiveResult{} // readers added to liveReaders later
	var otherOrder []string
	for _, l := range r.Live {
		switch l.Reader {
		case readerRelay:
			relays = append(relays, l)
		case readerPolling:
			pollers = append(pollers, l)
		default:
			if _, ok := others[l.Reader]; !ok {
				otherOrder = append(otherOrder, l.Reader)
			}
			others[l.Reader] = append(others[l.Reader], l)
		}
	}
	first := r.Live[0]
	setup := fmt.Sprintf("producers insert at a fixed rate for %.0f s, %d rows per transaction (one `INSERT … SELECT FROM unnest(…)` "+
		"each), from %d connections; payload ≈ %d B jsonb. Latency per event = the moment a franz-go consumer "+
		"(FetchMaxWait 50 ms; the broker answers as soon as a record arrives) reads the record minus the moment the "+
		"producer's commit returned, joined on the `id` header; all events of the run, after a warm-up.",
		r.durationSeconds(), first.TxnRows, first.Producers, r.payloadSize())
	if len(relays) > 0 {
		fmt.Fprintf(w, "## 2. Live latency\n\nbroker: %s\n\nSetup: %s Relay: `ACK_MODE=delete`, every setting default "+
			"(STATUS_INTERVAL 1s). Slot lag = `pg_current_wal_lsn() - confirmed_flush_lsn`, sampled every second: "+
			"median of the first and of the last 5 samples, and the largest. Cores busy splits the machine's CPU "+
			"(2 cores = 2.00) during the load between the relay, every process of the Postgres cluster (producer "+
			"backends, walsender, the relay's DELETEs), this benchmark process (producers, consumer, and kfake when it "+
			"is the broker), the broker's own processes (the Apache Kafka JVM) and everything else on the machine.\n\n",
			r.Machine.Broker, setup)
		writeLiveTable(w, "relay", relays)
		var profiles []string
		for _, l := range relays {
			profiles = append(profiles, l.Profiles...)
		}
		writeProfiles(w, "Profiles of the relay over these runs (CPU during the load, allocations since start, heap at the end):", profiles)
		top := relays[len(relays)-1]
		flat := lagFlat(top)
		fmt.Fprintf(w, "\n| Target | Measured | Met |\n|---|---:|:-:|\n")
		for _, l := range relays {
			if l.TargetRate == 2000 {
				fmt.Fprintf(w, "| p50 ≤ 1.5 ms at 2,000/s | %.2f ms | %s |\n", l.P50Ms, met(l.P50Ms <= 1.5))
			}
		}
		fmt.Fprintf(w, "| p50 ≤ 3 ms at %s/s | %.2f ms | %s |\n", num(float64(top.TargetRate)), top.P50Ms, met(top.P50Ms <= 3))
		fmt.Fprintf(w, "| p99 ≤ 15 ms at %s/s | %.2f ms | %s |\n", num(float64(top.TargetRate)), top.P99Ms, met(top.P99Ms <= 15))
		fmt.Fprintf(w, "| slot lag flat (end ≤ 2 × start + 1 MB) | %s → %s | %s |\n", kb(top.LagStartBytes), kb(top.LagEndBytes), met(flat))
		fmt.Fprintf(w, "| every event delivered | %s/%s | %s |\n", num(float64(top.Received)), num(float64(top.Events)), met(top.Received == top.Events))
		fmt.Fprintln(w)
	}
	for _, name := range otherOrder {
		about := ""
		if name == readerDebezium {
			about = " " + debeziumLiveSetup + r.debeziumOverrides()
		}
		fmt.Fprintf(w, "## 2. Live latency: %s\n\nbroker: %s\n\nSetup: %s%s\n\n", name, r.Machine.Broker, setup, about)
		writeLiveTable(w, "reader", others[name])
		if name == readerDebezium && len(relays) > 0 {
			writeVersusRelay(w, relays, others[name])
		}
		fmt.Fprintln(w)
	}
	if len(pollers) > 0 {
		fmt.Fprintf(w, "## 3. Polling baseline\n\nbroker: %s\n\nSetup: the same load as in 2 through a minimal polling relay in the "+
			"benchmark process: in one transaction `SELECT … WHERE published_at IS NULL ORDER BY created_at LIMIT %d FOR UPDATE SKIP LOCKED` "+
			"(the id is a random uuid, so created_at gives arrival order, through the outbox DDL's partial index), publish "+
			"with segmentio/kafka-go (acks=all, BatchTimeout 1 ms), delete the rows, commit; sleep %s after a batch "+
			"that was not full.\n\n", r.Machine.Broker, pollBatch, pollInterval)
		fmt.Fprintf(w, "| Rate | Achieved | Received | p50 | p99 | p99.9 | max | Cores busy: Postgres / bench (poller included) / broker / other |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, l := range pollers {
			fmt.Fprintf(w, "| %s/s | %s/s | %s/%s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f / %.2f / %.2f / %.2f |\n",
				num(float64(l.TargetRate)), num(l.AchievedRate), num(float64(l.Received)), num(float64(l.Events)),
				l.P50Ms, l.P99Ms, l.P999Ms, l.MaxMs, l.CPU.Postgres, l.CPU.Bench, l.CPU.Broker, l.CPU.Other)
		}
		if len(relays) > 0 {
			fmt.Fprintf(w, "\n| Rate | Relay p50 | Poller p50 | Poller p50 / relay p50 (target ≥ 10) | Met | Relay p99 | Poller p99 |\n|---:|---:|---:|---:|:-:|---:|---:|\n")
			eachSameRate(pollers, relays, func(p, rl LiveResult) {
				x := ratio(p.P50Ms, rl.P50Ms)
				fmt.Fprintf(w, "| %s/s | %.2f ms | %.2f ms | %.1f × | %s | %.2f ms | %.2f ms |\n",
					num(float64(p.TargetRate)), rl.P50Ms, p.P50Ms, x, met(x >= 10), rl.P99Ms, p.P99Ms)
			})
		}
		fmt.Fprintln(w)
	}
}

// writeLiveTable writes one live reader's runs, one row per rate; who
// names the reader in the cores-busy heading.
func writeLiveTable(w *strings.Builder, who string, runs []LiveResult) {
	fmt.Fprintf(w, "| Rate | Achieved | Received | p50 | p99 | p99.9 | max | Slot lag start → end (max) | Cores busy: %s / Postgres / bench / broker / other | %s CPU / 100k events | Peak RSS |\n", who, who)
	fmt.Fprintf(w, "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, l := range runs {
		rss := "—"
		if l.PeakRSSMB > 0 {
			rss = fmt.Sprintf("%.0f MB", l.PeakRSSMB)
		}
		fmt.Fprintf(w, "| %s/s | %s/s | %s/%s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %s → %s (%s) | %s | %.2f s | %s |\n",
			num(float64(l.TargetRate)), num(l.AchievedRate), num(float64(l.Received)), num(float64(l.Events)),
			l.P50Ms, l.P99Ms, l.P999Ms, l.MaxMs, kb(l.LagStartBytes), kb(l.LagEndBytes), kb(l.LagMaxBytes), l.CPU,
			perHundredK(l.CPU.Reader*l.Seconds, float64(l.Events)), rss)
	}
}

// debeziumOverrides names the connector settings -debezium-config changed.
func (r *report) debeziumOverrides() string {
	if c := r.Options["debezium_config"]; c != "" {
		return " Changed from the defaults by -debezium-config: `" + c + "`."
	}
	return ""
}

// writeVersusRelay compares Debezium's live runs with the relay's at the
// same rates: the target is a relay p50 at most 1/5 of Debezium's.
func writeVersusRelay(w *strings.Builder, relays, dbz []LiveResult) {
	fmt.Fprintf(w, "\n| Rate | Relay p50 | Debezium p50 | Relay p50 / Debezium p50 (target ≤ 0.2) | Met | Relay p99 | Debezium p99 | Relay / Debezium CPU per event | Relay / Debezium peak RSS |\n|---:|---:|---:|---:|:-:|---:|---:|---:|---:|\n")
	eachSameRate(dbz, relays, func(d, rl LiveResult) {
		x := ratio(rl.P50Ms, d.P50Ms)
		cpu := ratio(rl.CPU.Reader*rl.Seconds/float64(max(1, rl.Events)), d.CPU.Reader*d.Seconds/float64(max(1, d.Events)))
		fmt.Fprintf(w, "| %s/s | %.2f ms | %.2f ms | %.2g | %s | %.2f ms | %.2f ms | %.2f | %.2f |\n",
			num(float64(d.TargetRate)), rl.P50Ms, d.P50Ms, x, met(x <= 0.2), rl.P99Ms, d.P99Ms, cpu, ratio(rl.PeakRSSMB, d.PeakRSSMB))
	})
}

// eachSameRate calls f with every run of a and the run of b at the same
// rate, in a's order.
func eachSameRate(a, b []LiveResult, f func(x, y LiveResult)) {
	for _, x := range a {
		for _, y := range b {
			if x.TargetRate == y.TargetRate {
				f(x, y)
			}
		}
	}
}

// perHundredK is seconds spent per 100,000 of events.
func perHundredK(seconds, events float64) float64 {
	if events <= 0 {
		return 0
	}
	return seconds / events * 100_000
}

// writeStalls lists the runs that stalled and were repeated.
func writeStalls(w *strings.Builder, stalls []*stallError) {
	if len(stalls) == 0 {
		return
	}
	fmt.Fprintf(w, "\n**%d run(s) stalled and were repeated in a fresh database** (not in the figures above):\n\n", len(stalls))
	for _, s := range stalls {
		fmt.Fprintf(w, "- %s: %s. Diagnostics: `%s`, goroutine stacks: `%s`.\n", s.Run, s.Summary, s.Diagnostics, s.RelayLog)
	}
}

// writeProfiles lists profile files with the command that reads each.
func writeProfiles(w *strings.Builder, title string, files []string) {
	if len(files) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n\n", title)
	for _, p := range files {
		hint := "go tool pprof -top " + p
		if strings.HasSuffix(p, "-allocs.pb.gz") {
			hint = "go tool pprof -top -sample_index=alloc_space " + p
		}
		fmt.Fprintf(w, "- `%s`\n", hint)
	}
	fmt.Fprintf(w, "\n`-top` summaries are saved next to them (`*-top.txt`); `go tool pprof -http=127.0.0.1:8080 <file>` shows a flame graph.\n")
}

func lagFlat(l LiveResult) bool { return l.LagEndBytes <= 2*l.LagStartBytes+1_000_000 }

func kb(n int64) string {
	if n >= 10_000_000 {
		return fmt.Sprintf("%.0f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.0f kB", float64(n)/1e3)
}

func (r *report) durationSeconds() float64 {
	if len(r.Live) == 0 {
		return 0
	}
	d, _ := time.ParseDuration(r.Options["live_duration"])
	return d.Seconds()
}

func (r *report) payloadSize() int {
	n, _ := strconv.Atoi(r.Options["payload_bytes"])
	return n
}

func (r *report) largeMarkdown(w *strings.Builder) {
	l := r.Large
	fmt.Fprintf(w, "## 4. Large transaction\n\nbroker: %s\n\nSetup: one `INSERT … SELECT generate_series` of %s rows (jsonb payload ≈ %.0f B, "+
		"%.0f MB of WAL) while the relay streams, `ACK_MODE=%s`, default in-flight cap (MAX_INFLIGHT_BYTES 64 MiB) and "+
		"every other setting default. Drain = from the commit's return until every record is acked and the slot "+
		"confirmed the transaction. Peak RSS = VmHWM of the relay process at the end; in-flight bytes and the Go "+
		"heap are sampled from /metrics every 100 ms (1 MB = 10^6 bytes).\n\n",
		r.Machine.Broker, num(float64(l.Rows)), l.PayloadBytes, float64(l.WALBytes)/1e6, l.AckMode)
	fmt.Fprintf(w, "| Insert until commit | Drain after commit | All acked by Kafka at | Events/s | Idle RSS | Peak RSS | Max in-flight sampled | Max Go heap in use sampled | Records in Kafka |\n")
	fmt.Fprintf(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(w, "| %.1f s | %.1f s | %.1f s | %s | %.0f MB | %.0f MB | %.1f MB | %.0f MB | %s |\n",
		l.InsertSeconds, l.DrainSeconds, l.KafkaSeconds, num(l.EventsPerSec), l.IdleRSSMB, l.PeakRSSMB, l.MaxInflightMB, l.MaxHeapMB, num(float64(l.RecordsInKafka)))
	writeStalls(w, l.Stalls)
	writeProfiles(w, "Profiles of the relay during the drain (CPU; heap when in-flight bytes first passed half the cap; allocations and heap at the end):", l.Profiles)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "| Target | Measured | Met |\n|---|---:|:-:|\n| peak RSS ≤ 100 MB | %.0f MB | %s |\n\n", l.PeakRSSMB, met(l.PeakRSSMB <= 100))
}
