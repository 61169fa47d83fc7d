// Package devenv brings up the throw-away infrastructure the relay runs
// against outside production: a Postgres cluster started from the local
// server binaries, an in-process Kafka-protocol cluster (kfake) reached over
// loopback TCP, real Apache Kafka brokers run as java processes from jars
// Maven fetches once (StartApacheKafka), Debezium's outbox connector run by
// Kafka Connect from jars of its own (StartDebezium), and an independent
// consumer that reads back what was produced.
//
// The integration tests and `make demo` share it, so it must never import
// package testing, and everything it starts must be stoppable by its owner:
// every constructor has a matching Stop or Close.
package devenv
