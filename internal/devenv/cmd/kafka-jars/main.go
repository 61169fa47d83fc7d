// Command kafka-jars fetches into the cache the Apache Kafka broker's jars
// (devenv.ApacheKafkaJars) and Debezium's with Kafka Connect's
// (devenv.DebeziumJars), and prints their directories, so that CI and the
// benchmark pay the download before the timed work.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, fetch := range []func(context.Context) (string, error){devenv.ApacheKafkaJars, devenv.DebeziumJars} {
		dir, err := fetch(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kafka-jars:", err)
			os.Exit(1)
		}
		fmt.Println(dir)
	}
}
