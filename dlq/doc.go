// Package dlq reads the dead-letter topic and sends its records on: List
// counts the dead letters by reason and summarises the newest, Replay
// re-publishes them to the topics they were meant for, tracking its progress
// with a consumer group so that a replay can stop and resume.
//
// A dead-letter record is the original record (key, value, headers) plus
// the outbox.dlq.* headers saying why it was dead-lettered (see package
// outbox). This package must never print or log a record's value or any
// header other than the id and the outbox.dlq.* ones, and Replay must never
// commit a group offset past a record before its re-published copy was acked.
package dlq
