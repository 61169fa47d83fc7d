// Command outbox-demo shows the relay working on a machine without Docker: it
// starts a throw-away Postgres from the local binaries and an in-process
// Kafka-protocol broker, runs the outbox-relay binary against them, inserts
// events with an ordinary client and prints them as a Kafka consumer reads
// them.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

func main() {
	relayBin := flag.String("relay", "bin/outbox-relay", "path to the outbox-relay binary")
	events := flag.Int("events", 12, "events to insert")
	broker := flag.String("kafka", "kfake", "the broker: kfake (in-process, nothing but Go) or apache (a real Apache Kafka broker; needs java and mvn)")
	keep := flag.Bool("keep", false, "keep everything running until Ctrl-C (to try kcat or psql by hand)")
	flag.Parse()
	if err := demo(*relayBin, *broker, *events, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func demo(relayBin, broker string, events int, keep bool) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	step("starting a throw-away Postgres (wal_level=logical) from the local binaries")
	// synchronous_commit on: the walsender sends only flushed WAL, so "off"
	// would add up to wal_writer_delay (200 ms) to every event.
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: map[string]string{"synchronous_commit": "on"}})
	if err != nil {
		return err
	}
	defer pg.Stop()
	if err := pg.CreateDatabase(ctx, "demo"); err != nil {
		return err
	}
	pgURL := pg.URL("demo")
	fmt.Println("   ", pgURL)

	addrs, closeKafka, err := startBroker(ctx, broker)
	if err != nil {
		return err
	}
	defer closeKafka()
	brokers := strings.Join(addrs, ",")
	fmt.Println("   ", brokers)

	env := append(os.Environ(),
		"OUTBOX_RELAY_PG_URL="+pgURL,
		"OUTBOX_RELAY_KAFKA_BROKERS="+brokers,
		"OUTBOX_RELAY_STATUS_INTERVAL=200ms",
	)

	step("outbox-relay setup")
	setup := exec.CommandContext(ctx, relayBin, "setup")
	setup.Env, setup.Stdout, setup.Stderr = env, prefixed("    setup | "), prefixed("    setup | ")
	if err := setup.Run(); err != nil {
		return fmt.Errorf("outbox-relay setup: %w", err)
	}

	step("outbox-relay run (its JSON log lines are prefixed with 'relay |')")
	run := exec.Command(relayBin, "run")
	run.Env, run.Stdout, run.Stderr = env, prefixed("    relay | "), prefixed("    relay | ")
	if err := run.Start(); err != nil {
		return fmt.Errorf("start outbox-relay run: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	defer run.Process.Kill()

	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	// The consumer runs while the events are inserted, so the latency shown is
	// commit → relay → broker → consumer, not the time this demo took.
	client, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics("outbox.event.order"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(10*time.Millisecond))
	if err != nil {
		return err
	}
	defer client.Close()
	type arrival struct {
		rec *kgo.Record
		at  time.Time
	}
	arrivals := make(chan arrival, events)
	readCtx, cancelRead := context.WithTimeout(ctx, 60*time.Second)
	defer cancelRead()
	go func() {
		for readCtx.Err() == nil {
			client.PollFetches(readCtx).EachRecord(func(r *kgo.Record) { arrivals <- arrival{r, time.Now()} })
		}
	}()

	step(fmt.Sprintf("inserting %d events, one every 100 ms, each in a transaction with its business change", events))
	if _, err := conn.Exec(ctx, "CREATE TABLE orders (id int PRIMARY KEY, status text)"); err != nil {
		return err
	}
	committed := map[string]time.Time{}
	for i := 1; i <= events; i++ {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		orderID := (i-1)%4 + 1
		status := []string{"created", "paid", "shipped"}[(i-1)/4%3]
		if _, err := tx.Exec(ctx, "INSERT INTO orders VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET status = excluded.status", orderID, status); err != nil {
			return err
		}
		var id string
		err = tx.QueryRow(ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers)
			VALUES ('order', $1, $2, jsonb_build_object('order', $3::int, 'status', $4::text), '{"trace-id":"demo"}')
			RETURNING id`, fmt.Sprint(orderID), "order."+status, orderID, status).Scan(&id)
		if err != nil {
			return err
		}
		sent := time.Now()
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		committed[id] = sent
		time.Sleep(100 * time.Millisecond)
	}

	step("what an independent Kafka consumer (franz-go) read, with the time from sending COMMIT to its arrival")
	seen := 0
	for seen < events {
		var a arrival
		select {
		case a = <-arrivals:
		case <-readCtx.Done():
			return fmt.Errorf("only %d of %d events arrived: %w", seen, events, readCtx.Err())
		}
		seen++
		r := a.rec
		var hdrs []string
		id := ""
		for _, h := range r.Headers {
			hdrs = append(hdrs, h.Key+"="+string(h.Value))
			if h.Key == "id" {
				id = string(h.Value)
			}
		}
		latency := ""
		if t, ok := committed[id]; ok {
			latency = fmt.Sprintf("  (%.1f ms after COMMIT)", float64(a.at.Sub(t).Microseconds())/1000)
		}
		fmt.Printf("    %s[%d]@%d key=%s value=%s headers=[%s]%s\n",
			r.Topic, r.Partition, r.Offset, r.Key, r.Value, strings.Join(hdrs, " "), latency)
	}

	time.Sleep(500 * time.Millisecond) // let a status interval pass so the position below is current
	var left int
	var confirmed string
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'outbox_relay'").Scan(&confirmed); err != nil {
		return err
	}
	step(fmt.Sprintf("all %d events arrived; %d rows left in the outbox (ACK_MODE=delete); slot confirmed at %s", seen, left, confirmed))

	if keep {
		step("still running; try it by hand, then press Ctrl-C:")
		fmt.Printf("    psql '%s' -c \"INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '9', 'order.created', '{}')\"\n", pgURL)
		fmt.Printf("    kcat -b %s -C -t outbox.event.order -f '%%t [%%p] key=%%k %%s headers=%%h\\n'\n", brokers)
		<-ctx.Done()
	}

	step("stopping the relay with SIGTERM (it drains and confirms its final position)")
	_ = run.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			return fmt.Errorf("relay exited with %w", err)
		}
	case <-time.After(40 * time.Second):
		return fmt.Errorf("relay did not stop within 40s")
	}
	step("relay exited 0. Demo done.")
	return nil
}

func step(msg string) { fmt.Println("==>", msg) }

// prefixed returns a writer that prints each line with prefix.
func prefixed(prefix string) io.Writer {
	r, w := io.Pipe()
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			fmt.Println(prefix + s.Text())
		}
	}()
	return w
}

// startBroker starts the demo's broker with the topic outbox.event.order (3
// partitions) in place, so the first events do not wait for the consumer to
// discover a topic created on the fly.
func startBroker(ctx context.Context, kind string) (addrs []string, closeBroker func(), err error) {
	switch kind {
	case "kfake":
		step("starting an in-process Kafka-protocol broker (kfake)")
		k, err := devenv.StartKafka(kfake.SeedTopics(3, "outbox.event.order"))
		if err != nil {
			return nil, nil, err
		}
		return k.Addrs(), k.Close, nil
	case "apache":
		step("starting an Apache Kafka broker (KRaft; the first run fetches its jars with Maven)")
		k, err := devenv.StartApacheKafka(ctx, devenv.ApacheOptions{})
		if err != nil {
			return nil, nil, err
		}
		if err := k.CreateTopic(ctx, "outbox.event.order", 3, 1, nil); err != nil {
			k.Close()
			return nil, nil, err
		}
		return k.Addrs(), k.Close, nil
	}
	return nil, nil, fmt.Errorf("-kafka %q: want kfake or apache", kind)
}
