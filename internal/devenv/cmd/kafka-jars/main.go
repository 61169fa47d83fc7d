// Command kafka-jars fetches the Apache Kafka broker's jars into the cache
// (devenv.ApacheKafkaJars) and prints their directory, so that CI pays the
// download before the timed tests.
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
	dir, err := devenv.ApacheKafkaJars(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kafka-jars:", err)
		os.Exit(1)
	}
	fmt.Println(dir)
}
