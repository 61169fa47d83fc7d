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

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/publisher"
	"github.com/outbox-relay/outbox-relay/relay"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage: outbox-relay <command> [flags]

commands:
  run      stream the outbox table to Kafka (the daemon)
  setup    create the outbox table, publication and replication slot if missing
           --recreate-slot  drop a lost slot; the next run recreates it and backfills
  status   show the slot, lag, WAL retention and unacked rows (--json for scripts)
  dlq ls   count dead letters by reason and list the newest
  dlq replay [--reason R] [--limit N] [--dry-run]
           send dead letters back to their original topics
  probe    ask a running relay's /readyz (a container health check); exit 0 or 1
  version  print the version (also --version)

Run "outbox-relay <command> --help" for a command's flags; help needs no
configuration. Configuration is read from OUTBOX_RELAY_* environment
variables (see README.md).
`

const runUsage = `usage: outbox-relay run

Streams the outbox table to Kafka until SIGTERM or SIGINT: the first signal
drains the records in flight (OUTBOX_RELAY_SHUTDOWN_TIMEOUT), a second one
stops at once. Several instances of one slot elect a leader; the others stand
by. Serves /metrics, /healthz and /readyz on OUTBOX_RELAY_HTTP_ADDR.

Needs OUTBOX_RELAY_PG_URL (or _FILE) and OUTBOX_RELAY_KAFKA_BROKERS; every
other variable has a default (see README.md).
`

const setupUsage = `usage: outbox-relay setup [--recreate-slot]

Creates the outbox table, the publication and the replication slot where
they are missing and prints what it found or did; running it again changes
nothing. Kafka is not contacted. Needs OUTBOX_RELAY_PG_URL (or _FILE).

flags:
  --recreate-slot  drop a lost slot (its WAL was removed); the next run
                   creates it again and backfills the unacked rows
`

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// command is one subcommand: what configuration it needs and how it runs.
// main is called with the arguments after the command's name.
type command struct {
	usage string // printed for --help when main does not parse flags itself
	needs relay.Needs
	main  func(args []string, cfg relay.Config, log zerolog.Logger, stdout, stderr io.Writer) int
}

var commands = map[string]command{
	"run":    {usage: runUsage, needs: relay.Needs{Postgres: true, Kafka: true}, main: runDaemon},
	"setup":  {usage: setupUsage, needs: relay.Needs{Postgres: true}, main: runSetup},
	"status": {needs: relay.Needs{Postgres: true}, main: runStatus},
	"dlq":    {needs: relay.Needs{Kafka: true}, main: runDLQ},
	"probe":  {needs: relay.Needs{}, main: runProbe},
}

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

func run(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "outbox-relay", buildVersion())
		return exitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	if helpRequested(args[1:]) {
		if cmd.usage != "" {
			fmt.Fprint(stdout, cmd.usage)
			return exitOK
		}
		// The command prints its own help, flags included, before it
		// looks at the configuration.
		return cmd.main(args[1:], relay.Config{}, zerolog.Nop(), stdout, stderr)
	}

	cfg, err := relay.LoadConfigFor(environ, cmd.needs)
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay: invalid configuration:\n%v\n", err)
		return exitUsage
	}
	level, _ := zerolog.ParseLevel(cfg.LogLevel)
	zerolog.TimeFieldFormat = time.RFC3339Nano
	log := zerolog.New(stderr).Level(level).With().Timestamp().Logger()
	return cmd.main(args[1:], cfg, log, stdout, stderr)
}

// helpRequested reports whether args ask for help: -h, -help or --help
// before any "--", or "help" as the first word (dlq help).
func helpRequested(args []string) bool {
	for i, a := range args {
		switch {
		case a == "--":
			return false
		case a == "-h" || a == "-help" || a == "--help", a == "help" && i == 0:
			return true
		}
	}
	return false
}

func runSetup(args []string, cfg relay.Config, log zerolog.Logger, stdout, stderr io.Writer) int {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	var opts relay.SetupOptions
	for _, a := range args {
		switch a {
		case "--recreate-slot":
			opts.RecreateSlot = true
		default:
			fmt.Fprintf(stderr, "setup: unknown flag %q\n\n%s", a, setupUsage)
			return exitUsage
		}
	}
	if err := relay.Setup(ctx, cfg, log.With().Str("component", "setup").Logger(), stdout, opts); err != nil {
		log.Error().Str("component", "setup").Err(err).Msg("setup failed")
		return exitFailed
	}
	return exitOK
}

// newProducer builds the relay's Kafka producer from the relay's settings.
func newProducer(cfg relay.Config, log zerolog.Logger) relay.NewProducer {
	return func(onRetry func(kind string)) (relay.Producer, error) {
		pub, err := publisher.New(publisher.Config{
			Brokers:             trimAll(cfg.KafkaBrokers),
			TopicTemplate:       cfg.Topic,
			CloudEvents:         cfg.CloudEvents,
			CloudEventsSource:   cfg.CloudEventsSource,
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
	"TLSCAFile":         "KAFKA_TLS_CA_FILE",
	"SASLMechanism":     "KAFKA_SASL_MECHANISM",
	"Compression":       "KAFKA_COMPRESSION",
	"CloudEventsSource": "CLOUDEVENTS_SOURCE",
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
func runDaemon(args []string, cfg relay.Config, log zerolog.Logger, _, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "run: unexpected argument %q\n\n%s", args[0], runUsage)
		return exitUsage
	}
	mainLog := log.With().Str("component", "main").Logger()
	if os.Getenv("GOMEMLIMIT") == "" {
		// The in-flight cap bounds live memory; without a limit the Go
		// collector lets the heap grow to twice the live size before it
		// runs. A soft limit a little above the cap keeps the process near
		// what the cap promises (GOMEMLIMIT overrides it).
		debug.SetMemoryLimit(cfg.MaxInflightBytes*3/2 + 16<<20)
	}
	reg := relay.NewRegistry(buildVersion())
	r, err := relay.New(cfg, log, reg, newProducer(cfg, log.With().Str("component", "publisher").Logger()))
	if err != nil {
		mainLog.Error().Err(err).Msg("cannot start")
		return exitFailed
	}
	defer r.Close()
	reg.MustRegister(relay.NewReadiness(r.Health()))

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
