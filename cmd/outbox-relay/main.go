// Command outbox-relay streams the rows of a Postgres outbox table to Kafka
// through logical replication. Configuration comes from OUTBOX_RELAY_*
// environment variables; see the README.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/publisher"
	"github.com/outbox-relay/outbox-relay/relay"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage: outbox-relay <command>

commands:
  run      stream the outbox table to Kafka (the daemon)
  setup    create the outbox table, publication and replication slot if missing
           --recreate-slot  drop a lost slot; the next run recreates it and backfills
  status   show the slot, lag, WAL retention and unacked rows (--json for scripts)
  dlq ls   count dead letters by reason and list the newest
  dlq replay [--reason R] [--limit N] [--dry-run]
           send dead letters back to their original topics
  version  print the version

Configuration is read from OUTBOX_RELAY_* environment variables (see README.md).
`

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

func run(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "outbox-relay", buildVersion())
		return exitOK
	case "run", "setup", "status", "dlq":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}

	cfg, err := relay.LoadConfig(environ, args[0] == "run" || args[0] == "dlq")
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay: invalid configuration:\n%v\n", err)
		return exitUsage
	}
	level, _ := zerolog.ParseLevel(cfg.LogLevel)
	zerolog.TimeFieldFormat = time.RFC3339Nano
	log := zerolog.New(stderr).Level(level).With().Timestamp().Logger()

	switch args[0] {
	case "status":
		return runStatus(args[1:], cfg, stdout, stderr)
	case "dlq":
		return runDLQ(args[1:], cfg, stdout, stderr)
	case "setup":
		ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer cancel()
		var opts relay.SetupOptions
		for _, a := range args[1:] {
			switch a {
			case "--recreate-slot":
				opts.RecreateSlot = true
			default:
				fmt.Fprintf(stderr, "setup: unknown flag %q\n", a)
				return exitUsage
			}
		}
		if err := relay.Setup(ctx, cfg, log.With().Str("component", "setup").Logger(), stdout, opts); err != nil {
			log.Error().Str("component", "setup").Err(err).Msg("setup failed")
			return exitFailed
		}
		return exitOK
	default:
		return runDaemon(cfg, log)
	}
}

// newProducer builds the relay's Kafka producer from the relay's settings.
func newProducer(cfg relay.Config, log zerolog.Logger) relay.NewProducer {
	return func(onRetry func(kind string)) (relay.Producer, error) {
		pub, err := publisher.New(publisher.Config{
			Brokers:             trimAll(cfg.KafkaBrokers),
			TopicTemplate:       cfg.Topic,
			BatchBytes:          cfg.KafkaBatchBytes,
			MaxMessageBytes:     cfg.KafkaMaxMessageBytes,
			Compression:         cfg.KafkaCompression,
			ClientID:            cfg.KafkaClientID,
			WriteTimeout:        cfg.KafkaWriteTimeout,
			UnknownTopicTimeout: cfg.KafkaUnknownTopicTimeout,
			OnRetry:             onRetry,
			TLS:                 cfg.KafkaTLS,
			TLSCAFile:           cfg.KafkaTLSCAFile,
			TLSSkipVerify:       cfg.KafkaTLSSkipVerify,
			SASLMechanism:       cfg.KafkaSASLMechanism,
			SASLUser:            cfg.KafkaSASLUser,
			SASLPassword:        cfg.KafkaSASLPassword,
		}, log)
		if err != nil {
			return nil, nameSetting(err)
		}
		return pub, nil
	}
}

// settingVariables names the variable behind each publisher.Config field
// that can be invalid in a way only the publisher finds out.
var settingVariables = map[string]string{
	"TLSCAFile":     "KAFKA_TLS_CA_FILE",
	"SASLMechanism": "KAFKA_SASL_MECHANISM",
	"Compression":   "KAFKA_COMPRESSION",
}

// nameSetting rewrites a publisher error about one setting to name the
// environment variable a user sets.
func nameSetting(err error) error {
	var se *publisher.SettingError
	if errors.As(err, &se) {
		if v, ok := settingVariables[se.Setting]; ok {
			return fmt.Errorf("%s%s: %w", relay.EnvPrefix, v, se.Err)
		}
	}
	return err
}

// runDaemon runs the relay until a signal: the first SIGTERM/SIGINT starts a
// graceful stop (bounded by the shutdown timeout); a second one, or the
// timeout passing by a margin, stops at once.
func runDaemon(cfg relay.Config, log zerolog.Logger) int {
	mainLog := log.With().Str("component", "main").Logger()
	if os.Getenv("GOMEMLIMIT") == "" {
		// The in-flight cap bounds live memory; without a limit the Go
		// collector lets the heap grow to twice the live size before it
		// runs. A soft limit a little above the cap keeps the process near
		// what the cap promises (GOMEMLIMIT overrides it).
		debug.SetMemoryLimit(cfg.MaxInflightBytes*3/2 + 16<<20)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r, err := relay.New(cfg, log, reg, newProducer(cfg, log.With().Str("component", "publisher").Logger()))
	if err != nil {
		mainLog.Error().Err(err).Msg("cannot start")
		return exitFailed
	}
	defer r.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	var stopOnce sync.Once
	stopRelay := func() { stopOnce.Do(func() { close(stop) }) }
	// A relay whose /metrics and /readyz went away runs unobserved: when the
	// HTTP server fails, the relay stops gracefully and exits non-zero.
	var httpFailed atomic.Bool
	if cfg.HTTPAddr != "" {
		_, served, err := relay.ServeHTTP(ctx, cfg.HTTPAddr, reg, r.Health(), cfg.PProf, log.With().Str("component", "http").Logger())
		if err != nil {
			mainLog.Error().Err(err).Msg("cannot serve metrics and health")
			return exitFailed
		}
		go func() {
			if err := <-served; err != nil {
				httpFailed.Store(true)
				mainLog.Error().Err(err).Msg("metrics and health server failed: stopping")
				stopRelay()
			}
		}()
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		mainLog.Info().Str("signal", sig.String()).Dur("timeout", cfg.ShutdownTimeout).Msg("stopping: draining in-flight records")
		stopRelay()
		select {
		case sig = <-signals:
			mainLog.Warn().Str("signal", sig.String()).Msg("second signal: stopping now")
		case <-time.After(cfg.ShutdownTimeout + 5*time.Second):
			mainLog.Warn().Msg("drain overran the shutdown timeout: stopping now")
		}
		cancel()
	}()

	mainLog.Info().Str("version", buildVersion()).Msg("starting")
	if err := r.Run(ctx, stop); err != nil {
		if errors.Is(err, context.Canceled) {
			mainLog.Warn().Msg("stopped before every in-flight record was acked; they are re-sent on the next start")
		} else {
			mainLog.Error().Err(err).Msg("stopped on a fatal error")
		}
		return exitFailed
	}
	if httpFailed.Load() {
		return exitFailed
	}
	return exitOK
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
		if info.Main.Version != "" {
			return info.Main.Version
		}
	}
	return "dev"
}
