package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/dlq"
	"github.com/outbox-relay/outbox-relay/internal/kafkaauth"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/publisher"
	"github.com/outbox-relay/outbox-relay/relay"
)

const dlqUsage = `usage: outbox-relay dlq <command> [flags]

commands:
  ls      count the dead letters by reason and list the newest
          (ids, reasons, errors; never payloads)
  replay  re-publish dead letters to their original topics

The dead-letter topic is OUTBOX_RELAY_DLQ_TOPIC; the brokers and their TLS
and SASL settings are the relay's own (OUTBOX_RELAY_KAFKA_*).
Run "outbox-relay dlq <command> --help" for its flags.
`

const dlqLsUsage = `usage: outbox-relay dlq ls [--limit N] [--json]

Reads the whole dead-letter topic (up to its end when the command starts,
without a consumer group: nothing is committed) and prints the number of
records by reason and the newest N records: time, partition/offset, id,
reason, original topic and error. Payloads and other headers are never
printed.

flags:
`

const dlqReplayUsage = `usage: outbox-relay dlq replay [--reason R] [--limit N] [--dry-run] [--group G] [--json]

Re-publishes dead letters to the topic they were meant for, with their
original key, value and headers (without the outbox.dlq.* headers) plus
outbox.replayed_from = "<dlq topic>/<partition>/<offset>", acks=all.

Progress is kept in a consumer group: each batch's offsets are committed
only after its records were acked, so an interrupted replay resumes where it
stopped when run again with the same flags. The replay stops at the end the
topic had when it started, or after --limit records.

The default group is outbox-relay-dlq-replay, or
outbox-relay-dlq-replay.<reason> with --reason: a filtered replay moves its
group past the records it skips, so it keeps its own group and the skipped
records stay available to an unfiltered replay (which then sends the
filtered reason's records again: consumers de-duplicate by the id header).

Records whose value was replaced by a stub (too large to keep), or that name
no original topic or an invalid one, cannot be replayed from the topic; they
are counted and passed over. A stub's row is kept whole in the dead-letter
table next to the outbox (<OUTBOX_RELAY_TABLE>_dead_letter): after the topic,
replay sends those rows (same --reason, --limit and --dry-run) with the
relay's producer settings, and deletes each row once its record was acked. A
row refused again stays in the table.

flags:
`

// dlqTimeFormat prints record times to the millisecond, in UTC.
const dlqTimeFormat = "2006-01-02T15:04:05.000Z"

// runDLQ runs `outbox-relay dlq`; args are the arguments after the word
// "dlq" ("ls …" or "replay …"). It returns the process exit code. Flags are
// parsed before the configuration is looked at, so --help needs none.
func runDLQ(args []string, cfg relay.Config, _ zerolog.Logger, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return exitUsage
	}
	switch args[0] {
	case "ls":
		return runDLQList(args[1:], cfg, stdout, stderr)
	case "replay":
		return runDLQReplay(args[1:], cfg, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, dlqUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "outbox-relay dlq: unknown command %q\n\n%s", args[0], dlqUsage)
		return exitUsage
	}
}

// dlqSession turns the relay's configuration into the dead-letter tools'
// and a context that ends on SIGINT/SIGTERM; ok is false (the error
// printed) when the configuration does not do.
func dlqSession(cfg relay.Config, stderr io.Writer) (ctx context.Context, cancel context.CancelFunc, dlqCfg dlq.Config, ok bool) {
	if len(cfg.KafkaBrokers) == 0 {
		fmt.Fprintf(stderr, "outbox-relay dlq: %sKAFKA_BROKERS is not set\n", relay.EnvPrefix)
		return nil, nil, dlq.Config{}, false
	}
	dlqCfg, err := dlqConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay dlq: %v\n", err)
		return nil, nil, dlq.Config{}, false
	}
	ctx, cancel = signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	return ctx, cancel, dlqCfg, true
}

// openDeadLetterTable connects to Postgres when the outbox's dead-letter
// table exists; nil (and no error) when it does not, or when no Postgres
// URL is configured (the dlq commands then work on the topic alone).
func openDeadLetterTable(ctx context.Context, cfg relay.Config) (*pgx.Conn, error) {
	if cfg.PGURL == "" {
		return nil, nil
	}
	conn, err := pgx.Connect(ctx, cfg.PGURL)
	if err != nil {
		return nil, fmt.Errorf("connect to Postgres for the dead-letter table: %w", err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", cfg.TableName().DeadLetterTable().Quoted()).Scan(&exists); err != nil || !exists {
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, fmt.Errorf("look up the dead-letter table: %w", err)
		}
		return nil, nil
	}
	return conn, nil
}

func runDLQList(args []string, relayCfg relay.Config, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("dlq ls", flag.ContinueOnError)
	flags.SetOutput(stderr)
	limit := flags.Int("limit", 20, "how many of the newest records to list")
	asJSON := flags.Bool("json", false, "print one JSON object instead of tables")
	if code, ok := parseFlags(flags, args, dlqLsUsage, stdout); !ok {
		return code
	}
	if *limit < 0 {
		fmt.Fprintf(stderr, "outbox-relay dlq ls: --limit %d is negative\n", *limit)
		return exitUsage
	}
	ctx, cancel, cfg, ok := dlqSession(relayCfg, stderr)
	if !ok {
		return exitUsage
	}
	defer cancel()
	listing, err := dlq.List(ctx, cfg, *limit)
	if err == nil {
		listing.Table, err = listTable(ctx, relayCfg, *limit)
	}
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay dlq ls: %v\n", err)
		return exitFailed
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(listing); err != nil {
			fmt.Fprintf(stderr, "outbox-relay dlq ls: %v\n", err)
			return exitFailed
		}
		return exitOK
	}
	printListing(stdout, listing)
	if t := listing.Table; t != nil {
		fmt.Fprintf(stdout, "\ndead-letter table %s: %d rows kept whole (their records are stubs; `dlq replay` sends them)\n", t.Table, t.Total)
		if t.Total > 0 {
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "DEAD-LETTERED AT\tID\tREASON\tLSN\tERROR")
			for _, e := range t.Newest {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.DeadLetteredAt.UTC().Format(dlqTimeFormat), printable(e.ID, 64),
					printable(e.Reason, 0), orDash(e.LSN), printable(e.Error, 200))
			}
			tw.Flush()
		}
	}
	return exitOK
}

// listTable lists the dead-letter table; nil when there is none.
func listTable(ctx context.Context, cfg relay.Config, limit int) (*dlq.TableListing, error) {
	conn, err := openDeadLetterTable(ctx, cfg)
	if err != nil || conn == nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	l, err := dlq.ListTable(ctx, conn, cfg.TableName(), cfg.Mapping(), limit)
	return &l, err
}

func printListing(out io.Writer, l dlq.Listing) {
	if !l.Exists {
		fmt.Fprintf(out, "dead-letter topic %s does not exist: nothing was ever dead-lettered\n", l.Topic)
		return
	}
	fmt.Fprintf(out, "dead-letter topic %s: %d records\n", l.Topic, l.Total)
	if l.Total == 0 {
		return
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REASON\tRECORDS")
	for _, rc := range sortedCounts(l.ByReason) {
		fmt.Fprintf(tw, "%s\t%d\n", printable(rc.name, 0), rc.n)
	}
	tw.Flush()
	if len(l.Newest) == 0 {
		return
	}
	fmt.Fprintf(out, "\nnewest %d:\n", len(l.Newest))
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tPARTITION/OFFSET\tID\tREASON\tORIGINAL TOPIC\tERROR")
	for _, e := range l.Newest {
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\n", e.Time.UTC().Format(dlqTimeFormat), e.Partition, e.Offset,
			orDash(printable(e.ID, 64)), printable(e.Reason, 64), orDash(printable(e.OriginalTopic, 0)), orDash(printable(e.Error, 200)))
	}
	tw.Flush()
}

func runDLQReplay(args []string, relayCfg relay.Config, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("dlq replay", flag.ContinueOnError)
	flags.SetOutput(stderr)
	reason := flags.String("reason", "", "replay only records with this outbox.dlq.reason (default: every reason)")
	limit := flags.Int("limit", 0, "stop after replaying this many records (0: no limit)")
	dryRun := flags.Bool("dry-run", false, "print what would be replayed; publish and commit nothing")
	group := flags.String("group", "", "consumer group that keeps the progress (default "+dlq.DefaultGroup+"[.<reason>])")
	asJSON := flags.Bool("json", false, "print the summary as one JSON object")
	if code, ok := parseFlags(flags, args, dlqReplayUsage, stdout); !ok {
		return code
	}
	if *limit < 0 {
		fmt.Fprintf(stderr, "outbox-relay dlq replay: --limit %d is negative\n", *limit)
		return exitUsage
	}
	ctx, cancel, cfg, ok := dlqSession(relayCfg, stderr)
	if !ok {
		return exitUsage
	}
	defer cancel()
	opts := dlq.ReplayOptions{Reason: *reason, Limit: *limit, DryRun: *dryRun, Group: *group}
	if *dryRun && !*asJSON {
		opts.OnRecord = func(d dlq.Decision) { printDecision(stdout, d) }
	}
	result, err := dlq.Replay(ctx, cfg, opts)
	if err == nil {
		result.Table, err = replayTable(ctx, relayCfg, *reason, *limit, *dryRun)
	}
	if *asJSON {
		if encErr := json.NewEncoder(stdout).Encode(result); encErr != nil && err == nil {
			err = encErr
		}
	} else {
		printReplaySummary(stdout, result, *limit)
	}
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay dlq replay: %v\n", err)
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "outbox-relay dlq replay: what was counted above is committed; run the same command again to go on")
		}
		return exitFailed
	}
	return exitOK
}

func printDecision(out io.Writer, d dlq.Decision) {
	where := fmt.Sprintf("%d/%d id=%s reason=%s", d.Partition, d.Offset, orDash(printable(d.ID, 64)), printable(d.Reason, 64))
	switch d.Action {
	case dlq.ActionReplay:
		fmt.Fprintf(out, "would replay %s to %s\n", where, printable(d.OriginalTopic, 0))
	case dlq.ActionSkip:
		fmt.Fprintf(out, "would skip %s (not the reason asked for)\n", where)
	default:
		fmt.Fprintf(out, "cannot replay %s: %s\n", where, notReplayableText(d.Why))
	}
}

func notReplayableText(why string) string {
	switch why {
	case dlq.NotReplayableStub:
		return "the value was too large to keep; only a stub is in the dead-letter topic"
	case dlq.NotReplayableNoTopic:
		return "no " + outbox.HeaderDLQOriginalTopic + " header"
	case dlq.NotReplayableBadTopic:
		return "its original topic is not a valid topic name"
	}
	return why
}

func printReplaySummary(out io.Writer, r dlq.ReplayResult, limit int) {
	verb, prefix := "replayed", ""
	if r.DryRun {
		verb, prefix = "would replay", "dry run, nothing published or committed: "
	}
	fmt.Fprintf(out, "%sgroup %s: %s %d%s", prefix, r.Group, verb, r.Replayed, countsSuffix(r.ReplayedByReason))
	fmt.Fprintf(out, ", skipped %d%s", total(r.Skipped), countsSuffix(r.Skipped))
	if n := total(r.NotReplayable); n > 0 {
		fmt.Fprintf(out, ", not replayable %d%s", n, countsSuffix(r.NotReplayable))
	}
	fmt.Fprintln(out)
	if r.LimitReached {
		fmt.Fprintf(out, "stopped at --limit %d with records left: run again to go on\n", limit)
	}
	if t := r.Table; t != nil {
		fmt.Fprintf(out, "%sdead-letter table %s: %s %d", prefix, t.Table, verb, t.Replayed)
		if n := total(t.Failed); n > 0 {
			fmt.Fprintf(out, ", refused again %d%s (kept in the table: raise the topic's max.message.bytes and OUTBOX_RELAY_KAFKA_MAX_MESSAGE_BYTES)", n, countsSuffix(t.Failed))
		}
		fmt.Fprintln(out)
	}
}

// countsSuffix formats counts as " (a 3, b 1)", or "" when there are none.
func countsSuffix(counts map[string]int) string {
	sorted := sortedCounts(counts)
	if len(sorted) == 0 {
		return ""
	}
	parts := make([]string, len(sorted))
	for i, c := range sorted {
		parts[i] = printable(c.name, 64) + " " + strconv.Itoa(c.n)
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

type namedCount struct {
	name string
	n    int
}

// sortedCounts orders counts by number, largest first, then by name.
func sortedCounts(counts map[string]int) []namedCount {
	sorted := make([]namedCount, 0, len(counts))
	for name, n := range counts {
		sorted = append(sorted, namedCount{name, n})
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].n != sorted[j].n {
			return sorted[i].n > sorted[j].n
		}
		return sorted[i].name < sorted[j].name
	})
	return sorted
}

func total(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// printable makes header text safe for a one-line table cell: control
// characters (newlines, tabs, escapes) become spaces, and text longer than
// limit runes (0: no limit) is cut with an ellipsis.
func printable(s string, limit int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if limit > 0 {
		if runes := []rune(s); len(runes) > limit {
			s = string(runes[:limit-1]) + "…"
		}
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// parseFlags parses args; ok is false when the command must stop with code
// (0 after --help, exitUsage on a bad flag or a stray argument). Help that
// was asked for goes to stdout; after a mistake, to the flag set's output.
func parseFlags(flags *flag.FlagSet, args []string, usage string, stdout io.Writer) (code int, ok bool) {
	flags.Usage = func() {
		fmt.Fprint(flags.Output(), usage)
		flags.PrintDefaults()
	}
	if helpRequested(args) {
		flags.SetOutput(stdout)
		flags.Usage()
		return exitOK, false
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(flags.Output(), "outbox-relay %s: unexpected argument %q\n", flags.Name(), flags.Arg(0))
		flags.Usage()
		return exitUsage, false
	}
	return 0, true
}

// dlqConfig takes the dead-letter topic and the Kafka connection settings
// from the relay's configuration.
func dlqConfig(cfg relay.Config) (dlq.Config, error) {
	out := dlq.Config{
		Brokers:       trimAll(cfg.KafkaBrokers),
		Topic:         cfg.DLQTopic,
		SASLMechanism: cfg.KafkaSASLMechanism,
		SASLUser:      cfg.KafkaSASLUser,
		SASLPassword:  cfg.KafkaSASLPassword,
	}
	tlsCfg, err := kafkaauth.TLSConfig(cfg.KafkaTLS, cfg.KafkaTLSCAFile, cfg.KafkaTLSSkipVerify)
	if err != nil {
		return out, fmt.Errorf("%sKAFKA_TLS_CA_FILE: %w", relay.EnvPrefix, err)
	}
	out.TLS = tlsCfg
	return out, nil
}

func trimAll(ss []string) []string {
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// replayTable replays the dead-letter table's rows with a producer of the
// relay's own settings, so they reach the topics the relay would have sent
// them to; nil when there is no such table.
func replayTable(ctx context.Context, cfg relay.Config, reason string, limit int, dryRun bool) (*dlq.TableReplayResult, error) {
	conn, err := openDeadLetterTable(ctx, cfg)
	if err != nil || conn == nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pub, err := newProducer(cfg, zerolog.Nop())(nil)
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	r, err := dlq.ReplayTable(ctx, conn, cfg.TableName(), cfg.Mapping(), pub.(*publisher.Publisher), reason, limit, dryRun)
	return &r, err
}
