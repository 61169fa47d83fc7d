// Command outbox-bench measures the relay against the physical limit and the
// alternatives on one machine in one run: backlog drain against
// pg_recvlogical, commit-to-consumer latency under live load, a polling relay
// under the same load, and the memory of a million-row transaction.
//
// It starts a throw-away Postgres from the local binaries and a broker
// (-kafka: one real Apache Kafka broker, or franz-go's in-process kfake),
// runs the outbox-relay binary as a subprocess, and prints
// BENCHMARKS.md-ready tables (or JSON with -json).
// It prints figures and ratios; it never fails because a target is missed.
// Everything it starts listens on 127.0.0.1 and is stopped before it exits.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	relayBin     string
	kafka        string // apache or kfake
	outDir       string
	json         bool
	profile      bool
	scenarios    map[string]bool
	backlogRows  int
	backlogTxn   int
	drainRepeats int
	liveDuration time.Duration
	liveRates    []int
	liveTxn      int
	producers    int
	largeRows    int
	payloadBytes int
	// relayExtraEnv is added to the relay's environment (-relay-env).
	relayExtraEnv []string
	// debeziumConfig are connector properties for Debezium on top of the
	// benchmark's (-debezium-config).
	debeziumConfig map[string]string
}

func main() {
	var o options
	var scenarios, rates, relayExtra, debeziumConfig string
	flag.StringVar(&o.relayBin, "relay", "bin/outbox-relay", "path to the outbox-relay binary (make build)")
	flag.StringVar(&o.kafka, "kafka", "apache", "the broker: apache (one real Apache Kafka broker; needs java and mvn) "+
		"or kfake (franz-go's in-process fake, nothing but Go)")
	flag.StringVar(&o.outDir, "out", "bench-out", "directory for logs, profiles and the report files")
	flag.BoolVar(&o.json, "json", false, "print the results as JSON instead of markdown tables")
	flag.BoolVar(&o.profile, "profile", false, "take CPU and allocation profiles of the relay during the backlog drain")
	flag.StringVar(&scenarios, "scenarios", "drain,latency,polling,debezium,large", "scenarios to run, comma-separated")
	flag.IntVar(&o.backlogRows, "backlog-rows", 500_000, "rows in the backlog of the drain scenario")
	flag.IntVar(&o.backlogTxn, "backlog-txn-rows", 100, "rows per transaction in the backlog")
	flag.IntVar(&o.drainRepeats, "drain-repeats", 3, "rounds of the backlog drain (medians are reported)")
	flag.DurationVar(&o.liveDuration, "duration", 30*time.Second, "length of each live-load run")
	flag.StringVar(&rates, "rates", "1000,2000,5000,10000", "live-load rates in events/s, comma-separated")
	flag.IntVar(&o.liveTxn, "live-txn-rows", 10, "rows per transaction under live load")
	flag.IntVar(&o.producers, "producers", 4, "producer connections under live load")
	flag.IntVar(&o.largeRows, "large-rows", 1_000_000, "rows in the single large transaction")
	flag.IntVar(&o.payloadBytes, "payload-bytes", 400, "approximate size of each jsonb payload")
	flag.StringVar(&relayExtra, "relay-env", "", "extra NAME=value pairs for the relay's environment, comma-separated "+
		"(e.g. GOMEMLIMIT=100MiB,OUTBOX_RELAY_MAX_INFLIGHT_BYTES=16777216); they override the benchmark's settings")
	flag.StringVar(&debeziumConfig, "debezium-config", "", "extra connector properties for Debezium, key=value, comma-separated "+
		"(e.g. poll.interval.ms=10,max.batch.size=4096); they override the benchmark's (every Debezium default)")
	flag.Parse()
	o.debeziumConfig = map[string]string{}
	for _, kv := range strings.Split(debeziumConfig, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			fatal(fmt.Errorf("-debezium-config: %q is not key=value", kv))
		}
		o.debeziumConfig[k] = v
	}
	for _, kv := range strings.Split(relayExtra, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if !strings.Contains(kv, "=") {
			fatal(fmt.Errorf("-relay-env: %q is not NAME=value", kv))
		}
		o.relayExtraEnv = append(o.relayExtraEnv, kv)
	}

	if o.kafka != "apache" && o.kafka != "kfake" {
		fatal(fmt.Errorf("-kafka %q: want apache or kfake", o.kafka))
	}
	known := []string{"drain"}
	for _, rd := range liveReaders() {
		known = append(known, rd.scenario)
	}
	known = append(known, "large")
	o.scenarios = map[string]bool{}
	for _, s := range strings.Split(scenarios, ",") {
		switch s = strings.TrimSpace(s); {
		case slices.Contains(known, s):
			o.scenarios[s] = true
		case s != "":
			fatal(fmt.Errorf("-scenarios: unknown scenario %q (%s)", s, strings.Join(known, ", ")))
		}
	}
	for _, r := range strings.Split(rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n <= 0 {
			fatal(fmt.Errorf("-rates: %q is not a positive number", r))
		}
		o.liveRates = append(o.liveRates, n)
	}
	if o.backlogRows <= 0 || o.backlogTxn <= 0 || o.drainRepeats <= 0 || o.liveTxn <= 0 || o.producers <= 0 || o.largeRows <= 0 ||
		o.liveDuration < time.Second || o.payloadBytes < 100 {
		fatal(errors.New("sizes must be positive, -duration at least 1s and -payload-bytes at least 100"))
	}
	if _, err := os.Stat(o.relayBin); err != nil {
		fatal(fmt.Errorf("-relay %s: %w (run `make build` first)", o.relayBin, err))
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, o); err != nil {
		cancel()
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "outbox-bench:", err)
	os.Exit(1)
}

func run(ctx context.Context, o options) error {
	if err := os.MkdirAll(filepath.Join(o.outDir, "logs"), 0o755); err != nil {
		return err
	}
	// Bound the whole run: every scenario has its own deadlines too, this
	// only catches a bug that would otherwise hang a CI machine.
	ctx, cancel := context.WithTimeout(ctx, 45*time.Minute)
	defer cancel()

	started := time.Now() // the broker's start is part of the run's length
	b, err := newBench(ctx, o)
	if err != nil {
		return err
	}
	defer b.close()
	rep := &report{Machine: b.machine(ctx), Options: o.summary()}

	if o.scenarios["drain"] {
		res, err := b.backlogDrain(ctx)
		if err != nil {
			return fmt.Errorf("backlog drain: %w", err)
		}
		rep.Backlog = res
	}
	for _, rate := range o.liveRates {
		for _, rd := range liveReaders() {
			if !o.scenarios[rd.scenario] || (rd.available != nil && !rd.available(b)) {
				continue
			}
			res, err := b.live(ctx, rate, rd)
			if err != nil {
				return fmt.Errorf("%s at %d/s: %w", rd.name, rate, err)
			}
			rep.Live = append(rep.Live, res)
		}
	}
	if o.scenarios["large"] {
		res, err := b.largeTransaction(ctx)
		if err != nil {
			return fmt.Errorf("large transaction: %w", err)
		}
		rep.Large = res
	}
	rep.Machine.LoadEnd = loadAverage()
	rep.Machine.Duration = time.Since(started).Round(time.Second).String()

	md := rep.markdown()
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if o.json {
		fmt.Println(string(js))
	} else {
		fmt.Print(md)
	}
	b.logf("done in %s; %s/results.md and results.json hold the same", rep.Machine.Duration, o.outDir)
	return nil
}

// summary is the part of the options a reader of the results needs.
func (o options) summary() map[string]string {
	var rates []string
	for _, r := range o.liveRates {
		rates = append(rates, strconv.Itoa(r))
	}
	return map[string]string{
		"kafka":            o.kafka,
		"backlog_rows":     strconv.Itoa(o.backlogRows),
		"backlog_txn_rows": strconv.Itoa(o.backlogTxn),
		"drain_repeats":    strconv.Itoa(o.drainRepeats),
		"live_duration":    o.liveDuration.String(),
		"live_rates":       strings.Join(rates, ","),
		"live_txn_rows":    strconv.Itoa(o.liveTxn),
		"producers":        strconv.Itoa(o.producers),
		"large_rows":       strconv.Itoa(o.largeRows),
		"payload_bytes":    strconv.Itoa(o.payloadBytes),
		"profile":          strconv.FormatBool(o.profile),
		"relay_env":        strings.Join(o.relayExtraEnv, ","),
		"debezium_config":  debeziumConfigText(o.debeziumConfig),
	}
}
