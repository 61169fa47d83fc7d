// Package publisher turns outbox events into Kafka records and writes them
// with acks=all, reporting for every event either its ack or a permanent
// failure.
//
// # Records
//
// An event becomes one record: the topic is the event's own topic (the row's
// topic column) when it has one, else the topic template with
// ${aggregatetype} replaced by the event's aggregate type; the key is the
// aggregate id; the value is the payload exactly (a NULL payload stays a null
// value); the headers are "id", "type", then the row's own headers in their
// order. The partition is the Java client's default: murmur2 of the key
// (kafka-go's Murmur2Balancer), so consumers written against any Kafka
// client see one aggregate's events on one partition.
//
// # Order per key
//
// kafka-go has no idempotent producer, so the publisher itself must make
// sure a retry never puts an older record of a key after a newer one. In
// kafka-go v0.4.51 (writer.go) every topic-partition has one partitionWriter
// whose single goroutine takes batches from a FIFO queue and writes them one
// at a time; the Writer's own retries of a batch happen before the next batch
// of that partition. Once a batch gives up, though, the batches queued
// behind it still go out, and a batch the caller re-sends lands after them.
//
// The publisher therefore keeps exactly one batch per partition in flight:
//
//   - Publish calls never overlap (the relay makes one at a time, and the
//     publisher serialises Publish and PublishRaw anyway).
//   - A call is cut into chunks of at most BatchSize records and BatchBytes
//     bytes (measured the way kafka-go measures them), and each chunk is one
//     WriteMessages call. Within such a call kafka-go forms at most one batch
//     per partition, because a partition batch is only closed early when it
//     reaches BatchSize records or BatchBytes bytes.
//   - The Writer never retries (MaxAttempts 1). The publisher retries the
//     records that failed, with backoff and without limit, until they are
//     acked or rejected permanently; only then does the next chunk start. So
//     when failed records are re-sent, nothing newer of their partition has
//     been queued, and the re-sent batch cannot be overtaken.
//   - WriteMessages returns early when its context ends, while the batches it
//     queued are still written later. So the context the publisher hands to
//     kafka-go ends (with the caller's context or the attempt timeout) only
//     until every message has its partition, which is the last step before
//     kafka-go queues the batches; from then on the call waits for them, and
//     kafka-go bounds each produce request by WriteTimeout. If the context
//     ends in the very instant of that last step, the publisher closes the
//     Writer (which waits for its batches) and sends on through a fresh one.
//     Either way no batch outlives the call that queued it: nothing can
//     overtake it, and the events' bytes and the header slices the publisher
//     reuses are not read after Publish returns.
//
// A record rejected permanently leaves the ordered path: it is reported as
// an outbox.Failure (for the relay to dead-letter) and never re-sent behind newer
// records. When a batch of several records is rejected for a reason that
// belongs to one record (too large for the broker, invalid record), its
// records are re-sent one at a time, in order, so the good ones are delivered
// and only the culprits fail.
//
// Duplicates remain possible: a batch whose ack was lost is written again.
// They repeat whole records, in order, so the last copy of every record is
// still in commit order; consumers de-duplicate by the "id" header. What no
// producer without idempotence can rule out is a broker that appends a
// request only after the producer gave up on it (WriteTimeout) and re-sent
// it on another connection; a broker appends before it waits for replicas,
// so this takes a request stuck unread for WriteTimeout in the broker.
//
// This package must never reorder one key's records, never report an
// unacked record as delivered, and never log a payload.
package publisher
