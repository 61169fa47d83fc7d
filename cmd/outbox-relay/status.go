package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/relay"
)

// statusTimeout bounds the whole status command: a few catalog queries.
const statusTimeout = 30 * time.Second

const statusUsage = `usage: outbox-relay status [--json]

Shows the replication slot, the publication and the outbox table as Postgres
sees them (Kafka is not contacted): whether the slot exists and who holds it,
the confirmed position, the lag in bytes and in time, the WAL the slot
retains, and the rows not yet delivered.

The lag in time is the age of the commit of the oldest outbox row not yet
delivered (exact with track_commit_timestamp = on, else from its created_at);
it is 0 when the slot is caught up and unknown with ACK_MODE none.

Exit status: 0 the slot exists and is usable, 3 the slot is missing, 4 the
slot is lost (its WAL was removed), 1 Postgres could not be read, 2 bad usage.

flags:
`

// runStatus runs `outbox-relay status`; args are the arguments after the
// word "status". It returns the process exit code.
func runStatus(args []string, cfg relay.Config, _ zerolog.Logger, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("status", flag.ContinueOnError)
	flags.SetOutput(stderr)
	asJSON := flags.Bool("json", false, "print one JSON object (snake_case keys) instead of a table")
	if code, ok := parseFlags(flags, args, statusUsage, stdout); !ok {
		return code
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, statusTimeout)
	defer cancelTimeout()

	report, err := relay.Status(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay status: %v\n", err)
		return exitFailed
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(report); err != nil {
			fmt.Fprintf(stderr, "outbox-relay status: %v\n", err)
			return exitFailed
		}
	} else if err := printStatus(stdout, report); err != nil {
		fmt.Fprintf(stderr, "outbox-relay status: %v\n", err)
		return exitFailed
	}
	return report.ExitCode()
}

// printStatus writes the report as an aligned two-column table followed by
// its warnings.
func printStatus(out io.Writer, r relay.StatusReport) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, value) }

	row("slot", r.Slot)
	row("slot exists", yesNo(r.SlotExists))
	if r.SlotExists {
		row("slot plugin", r.SlotPlugin)
		row("slot database", r.SlotDatabase)
		row("active", yesNo(r.Active))
		row("active pid", optional(r.ActivePID, func(v int32) string { return strconv.Itoa(int(v)) }))
		holder := optional(r.HolderApplicationName, strconv.Quote)
		if r.HolderClientAddr != nil {
			holder += " from " + *r.HolderClientAddr
		}
		row("held by (application_name)", holder)
		row("confirmed flush lsn", optional(r.ConfirmedFlushLSN, identity))
		row("current wal lsn", r.CurrentWALLSN)
		row("lag", optional(r.LagBytes, formatBytes))
		lagTime := optional(r.LagSeconds, formatSeconds)
		if r.LagSeconds == nil {
			lagTime = "unknown"
		}
		row("lag time", lagTime+" ("+r.LagSource+")")
		row("wal status", r.WALStatus)
		safe := optional(r.SafeWALSize, formatBytes)
		if r.SafeWALSize == nil && r.WALStatus != "lost" {
			safe = "unlimited (max_slot_wal_keep_size = -1)"
		}
		row("safe wal size", safe)
		row("restart lsn", optional(r.RestartLSN, identity))
		row("retained wal", optional(r.RetainedBytes, formatBytes))
	} else {
		row("current wal lsn", r.CurrentWALLSN)
	}
	row("publication", r.Publication)
	row("publication exists", yesNo(r.PublicationExists))
	row("publication covers table", yesNo(r.PublicationCoversTable))
	row("table", r.Table)
	row("table exists", yesNo(r.TableExists))
	row("ack mode", r.AckMode)
	if r.AckMode == string(outbox.AckNone) {
		row("unacked rows", "n/a (ACK_MODE none)")
		row("oldest unacked", "n/a (ACK_MODE none)")
	} else {
		row("unacked rows", optional(r.UnackedRows, func(v int64) string { return strconv.FormatInt(v, 10) }))
		oldest := optional(r.OldestUnackedSeconds, formatSeconds)
		if r.UnackedRows != nil && *r.UnackedRows == 0 {
			oldest = "none"
		}
		row("oldest unacked", oldest)
	}
	row("database", r.Database)
	row("server version", r.ServerVersion)
	row("checked at", r.CheckedAt.UTC().Format(time.RFC3339))
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range r.Warnings {
		if _, err := fmt.Fprintf(out, "warning: %s\n", w); err != nil {
			return err
		}
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func identity(s string) string { return s }

// optional formats *v, or "-" when v is nil.
func optional[T any](v *T, format func(T) string) string {
	if v == nil {
		return "-"
	}
	return format(*v)
}

// formatBytes prints an exact byte count and, from 1 KiB, a rounded size.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	value, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB"} {
		value, suffix = value/unit, s
		if value < unit {
			break
		}
	}
	return fmt.Sprintf("%d bytes (%.1f %s)", n, value, suffix)
}

// formatSeconds prints an age as a duration, to the millisecond below a
// minute and to the second above.
func formatSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	if d < time.Minute {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
