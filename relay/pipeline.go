package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// rowAcker records in Postgres that rows were delivered (delete or mark).
type rowAcker interface {
	// Ack records the rows of ids, delivered from the transactions of xids
	// (none for rows read from a snapshot), and keeps the rows of kept (a
	// subset of ids) in the dead-letter table in the same transaction.
	// keys are the rows' partition key values, one per id, or nil.
	Ack(ctx context.Context, ids, keys []string, xids []uint32, kept []outbox.KeptRow) error
}

// appendAck appends the ids of events to ids, their partition key values to
// keys, and the rows to keep in the dead-letter table to kept. A row without
// an id (NULL: the table changed under the relay) cannot be recorded by id;
// it stays in the table, for the reconciler to find.
func appendAck(ids, keys []string, kept []outbox.KeptRow, events []outbox.Event) ([]string, []string, []outbox.KeptRow) {
	for i := range events {
		ev := &events[i]
		if ev.ID == nil {
			continue
		}
		ids = append(ids, string(ev.ID))
		if ev.PartitionKey != nil {
			keys = append(keys, string(ev.PartitionKey))
		}
		if ev.Kept != nil {
			lsn := ""
			if ev.LSN != 0 {
				lsn = ev.LSN.String()
			}
			kept = append(kept, outbox.KeptRow{ID: string(ev.ID), Reason: ev.Kept.Reason, Error: ev.Kept.Error, LSN: lsn})
		}
	}
	return ids, keys, kept
}

// keysOrNil returns keys when there is one for each of n ids, else nil: a
// batch is narrowed by partition key only when every row carries its key.
func keysOrNil(keys []string, n int) []string {
	if len(keys) != n {
		return nil
	}
	return keys
}

// batch is a run of events of one transaction, handed from the stream to the
// publisher and on to the acker as a unit, then recycled.
type batch struct {
	events []outbox.Event
	bytes  int64
	txn    uint64
	xid    uint32 // the transaction's xid, for the acker's visibility wait
}

// pipeline connects the stages of one streaming session:
//
//	stream goroutine ─Message→ decode into batches ─queue→ publish goroutine
//	  ─acked→ ack goroutine (delete/mark rows) ─settle→ checkpoint tracker
//
// The stream goroutine never blocks on a single record: it hands whole
// batches over under a mutex and stops reading only when the in-flight cap is
// reached. The tracker sees a record as acked only after Kafka acked it and,
// with ACK_MODE delete/mark, its row was deleted/marked.
type pipeline struct {
	log          zerolog.Logger
	dec          *decoder.Decoder
	delivery     *deliverer
	acker        rowAcker // nil with ACK_MODE none
	maxInflight  int64
	batchRecords int
	batchBytes   int64
	metrics      *Metrics
	health       *Health

	// Owned by the stream goroutine.
	cur        *batch
	txn        uint64
	xid        uint32
	inTxn      bool
	commitTime int64

	mu        sync.Mutex
	tracker   *checkpoint.Tracker
	inflight  int64    // bytes handed over and not yet settled
	toPublish []*batch // decoded, waiting for the publisher
	toAck     []*batch // published, waiting for the acker
	free      []*batch
	draining  bool

	// commits are the committed transactions not yet folded into the
	// watermark, oldest first, so the commit time at the watermark is known.
	commits []commitMark
	// settledCommit is the commit time (Unix ns) of the newest transaction at
	// or below the watermark: the reconciler's position.
	settledCommit atomic.Int64

	publishWake chan struct{}
	ackWake     chan struct{}
	room        chan struct{}
	drained     chan struct{}
}

const maxFreeBatches = 16

type commitMark struct {
	end  outbox.LSN
	time int64
}

// pipelineDeps are what a pipeline is built from.
type pipelineDeps struct {
	log      zerolog.Logger
	decoder  *decoder.Decoder
	delivery *deliverer
	// batchRecords and batchBytes cut batches the size the producer sends.
	batchRecords int
	batchBytes   int64
	acker        rowAcker // nil with ACK_MODE none
	tracker      *checkpoint.Tracker
	metrics      *Metrics
	health       *Health
	maxInflight  int64
}

func newPipeline(d pipelineDeps) *pipeline {
	p := &pipeline{
		log:          d.log,
		dec:          d.decoder,
		delivery:     d.delivery,
		acker:        d.acker,
		maxInflight:  d.maxInflight,
		batchRecords: d.batchRecords,
		batchBytes:   d.batchBytes,
		metrics:      d.metrics,
		health:       d.health,
		tracker:      d.tracker,
		publishWake:  make(chan struct{}, 1),
		ackWake:      make(chan struct{}, 1),
		room:         make(chan struct{}, 1),
		drained:      make(chan struct{}),
	}
	p.cur = p.newBatch()
	return p
}

// Message implements replication.Consumer.
func (p *pipeline) Message(ctx context.Context, walStart outbox.LSN, data []byte) error {
	n := len(p.cur.events)
	if n == cap(p.cur.events) {
		p.cur.events = append(p.cur.events, outbox.Event{})[:n]
	}
	ev := &p.cur.events[:n+1][n]
	msg, err := p.dec.Decode(data, ev)
	ev.Kept = nil // a recycled event's, until its delivery says otherwise
	if err != nil {
		var rowErr *decoder.RowError
		if !errors.As(err, &rowErr) || msg.Kind != decoder.KindInsert {
			return fatalf("decode message at %s: %w", walStart, err)
		}
		ev.Problem = rowErr.Error() // dead-lettered with reason decode_error
	} else {
		ev.Problem = ""
	}
	switch msg.Kind {
	case decoder.KindBegin:
		p.mu.Lock()
		txn, err := p.tracker.Begin()
		p.mu.Unlock()
		if err != nil {
			return fmt.Errorf("begin at %s: %w", walStart, err)
		}
		p.txn, p.xid, p.inTxn, p.commitTime = txn, msg.Xid, true, msg.CommitTime
	case decoder.KindInsert:
		if !p.inTxn {
			return fatalf("insert at %s outside a transaction", walStart)
		}
		ev.LSN, ev.CommitTime, ev.Txn = walStart, p.commitTime, p.txn
		p.cur.events = p.cur.events[:n+1]
		p.cur.bytes += int64(ev.Size())
		p.cur.txn, p.cur.xid = p.txn, p.xid
		if len(p.cur.events) >= p.batchRecords || p.cur.bytes >= p.batchBytes {
			return p.handOver()
		}
	case decoder.KindCommit:
		if !p.inTxn {
			return fatalf("commit at %s outside a transaction", walStart)
		}
		if err := p.handOver(); err != nil {
			return err
		}
		p.mu.Lock()
		err := p.tracker.Commit(p.txn, msg.EndLSN)
		if err == nil {
			p.commits = append(p.commits, commitMark{end: msg.EndLSN, time: msg.CommitTime})
			p.foldCommitsLocked()
		}
		p.mu.Unlock()
		if err != nil {
			return fmt.Errorf("commit at %s: %w", walStart, err)
		}
		p.inTxn = false
		p.metrics.transactions.Inc()
		p.health.received()
	case decoder.KindMessage:
		if string(msg.Prefix) == heartbeatPrefix {
			p.health.heartbeatReceived()
		}
		if !msg.Transactional && !p.inTxn {
			// Every transaction that committed before this message has been
			// received, so when nothing is in flight its position is safe to
			// confirm: the heartbeat moves an idle slot.
			p.mu.Lock()
			if p.inflight == 0 {
				p.tracker.AdvanceIdle(walStart)
			}
			p.mu.Unlock()
		}
	}
	return nil
}

// handOver registers the current batch with the tracker and queues it for
// the publisher.
func (p *pipeline) handOver() error {
	b := p.cur
	if len(b.events) == 0 {
		return nil
	}
	p.mu.Lock()
	err := p.tracker.Add(b.txn, len(b.events))
	if err == nil {
		p.inflight += b.bytes
		p.toPublish = append(p.toPublish, b)
		p.cur = p.newBatchLocked()
	}
	inflight := p.inflight
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("register %d records: %w", len(b.events), err)
	}
	p.metrics.inflightBytes.Set(float64(inflight))
	p.metrics.inflightRecs.Add(float64(len(b.events)))
	wake(p.publishWake)
	return nil
}

// Keepalive implements replication.Consumer.
func (p *pipeline) Keepalive(walEnd outbox.LSN) {
	if walEnd == 0 {
		return
	}
	p.health.received()
	p.mu.Lock()
	advanced := false
	if !p.inTxn && p.inflight == 0 {
		before := p.tracker.Watermark()
		p.tracker.AdvanceIdle(walEnd)
		advanced = p.tracker.Watermark() != before
	}
	p.mu.Unlock()
	if advanced {
		// The gauge and readiness follow the position at once, not at the
		// next status update.
		p.Position()
	}
}

// Position implements replication.Consumer.
func (p *pipeline) Position() outbox.LSN {
	p.mu.Lock()
	w := p.tracker.Watermark()
	inflight := p.inflight > 0
	p.mu.Unlock()
	p.metrics.confirmedLSN.Set(float64(w))
	p.health.progress(w, inflight)
	return w
}

// foldCommitsLocked drops the commits the watermark has passed and keeps the
// newest one's time.
func (p *pipeline) foldCommitsLocked() {
	w := p.tracker.Watermark()
	i := 0
	for i < len(p.commits) && p.commits[i].end <= w {
		i++
	}
	if i == 0 {
		return
	}
	p.settledCommit.Store(p.commits[i-1].time)
	n := copy(p.commits, p.commits[i:])
	p.commits = p.commits[:n]
}

// SettledCommitTime returns the commit time of the newest transaction at or
// below the confirmed position (zero before the first one settled): a row
// created before it (minus a grace) is not merely in flight.
func (p *pipeline) SettledCommitTime() time.Time {
	n := p.settledCommit.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Throttle implements replication.Consumer.
func (p *pipeline) Throttle() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inflight >= p.maxInflight {
		return p.room
	}
	return nil
}

// InTransaction implements replication.Consumer.
func (p *pipeline) InTransaction() bool { return p.inTxn }

// Drain implements replication.Consumer.
func (p *pipeline) Drain() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draining = true
	p.closeIfDrainedLocked()
	return p.drained
}

// publishCallChunks is how many producer chunks (batchRecords records or
// batchBytes bytes) one Publish call carries at most. The producer sends a
// call's chunks one after the other anyway, so a larger call saves no round
// trip; it would only copy more events into the scratch slice and build more
// Kafka messages at once, memory the in-flight cap does not see twice.
const publishCallChunks = 4

// publishLoop sends queued batches to Kafka, one Publish call at a time so
// that retries can never reorder records of one key.
func (p *pipeline) publishLoop(ctx context.Context) error {
	var scratch []outbox.Event
	maxRecords, maxBytes := publishCallChunks*p.batchRecords, publishCallChunks*p.batchBytes
	for {
		batches, err := p.take(ctx, &p.toPublish, p.publishWake, maxRecords, maxBytes)
		if err != nil {
			return nil // the session is ending
		}
		events := batches[0].events
		if len(batches) > 1 {
			scratch = scratch[:0]
			for _, b := range batches {
				scratch = append(scratch, b.events...)
			}
			events = scratch
		}
		delivered, err := p.delivery.deliver(ctx, events)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		p.metrics.published.Add(float64(delivered))
		if len(batches) > 1 && delivered < len(events) {
			// The acker reads the batches: hand back which rows go to the
			// dead-letter table.
			k := 0
			for _, b := range batches {
				for j := range b.events {
					b.events[j].Kept = scratch[k].Kept
					k++
				}
			}
		}
		now := time.Now().UnixNano()
		for _, b := range batches {
			p.metrics.commitToAck.Observe(float64(now-b.events[0].CommitTime) / 1e9)
		}
		if p.acker == nil {
			p.settle(batches)
			continue
		}
		p.mu.Lock()
		p.toAck = append(p.toAck, batches...)
		p.mu.Unlock()
		wake(p.ackWake)
	}
}

// ackLoop deletes or marks delivered rows, then settles them.
func (p *pipeline) ackLoop(ctx context.Context) error {
	var ids, keys []string
	var xids []uint32
	var kept []outbox.KeptRow
	for {
		batches, err := p.take(ctx, &p.toAck, p.ackWake, 0, 0)
		if err != nil {
			return nil
		}
		ids, keys, xids, kept = ids[:0], keys[:0], xids[:0], kept[:0]
		for _, b := range batches {
			if len(xids) == 0 || xids[len(xids)-1] != b.xid {
				xids = append(xids, b.xid)
			}
			ids, keys, kept = appendAck(ids, keys, kept, b.events)
		}
		if err := p.acker.Ack(ctx, ids, keysOrNil(keys, len(ids)), xids, kept); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ack %d delivered rows: %w", len(ids), err)
		}
		p.settle(batches)
	}
}

// take waits for queued batches and takes them from the front, oldest first:
// all of them, or with maxRecords > 0 only until they hold maxRecords events
// or maxBytes bytes (always at least one). Batches left behind stay queued
// and the wake-up is re-armed for them.
func (p *pipeline) take(ctx context.Context, queue *[]*batch, wakeup chan struct{}, maxRecords int, maxBytes int64) ([]*batch, error) {
	var taken []*batch
	for {
		p.mu.Lock()
		if q := *queue; len(q) > 0 {
			n := len(q)
			if maxRecords > 0 {
				records, bytes := 0, int64(0)
				for n = 0; n < len(q) && (n == 0 || records < maxRecords && bytes < maxBytes); n++ {
					records += len(q[n].events)
					bytes += q[n].bytes
				}
			}
			taken = append(taken, q[:n]...)
			rest := copy(q, q[n:])
			clear(q[rest:])
			*queue = q[:rest]
			if rest > 0 {
				wake(wakeup)
			}
		}
		p.mu.Unlock()
		if len(taken) > 0 {
			return taken, nil
		}
		select {
		case <-wakeup:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// settle tells the tracker the batches are done and frees their bytes.
func (p *pipeline) settle(batches []*batch) {
	records := 0
	p.mu.Lock()
	var err error
	for _, b := range batches {
		records += len(b.events)
		if e := p.tracker.Ack(b.txn, len(b.events)); e != nil && err == nil {
			err = e
		}
		p.inflight -= b.bytes
		p.recycleLocked(b)
	}
	p.foldCommitsLocked()
	inflight := p.inflight
	p.closeIfDrainedLocked()
	p.mu.Unlock()
	if err != nil {
		// The tracker is the safety of the whole relay: a bookkeeping bug
		// must not be papered over.
		panic(fmt.Sprintf("checkpoint bookkeeping: %v", err))
	}
	p.metrics.inflightBytes.Set(float64(inflight))
	p.metrics.inflightRecs.Sub(float64(records))
	wake(p.room)
}

func (p *pipeline) closeIfDrainedLocked() {
	if p.draining && p.inflight == 0 {
		select {
		case <-p.drained:
		default:
			close(p.drained)
		}
	}
}

func (p *pipeline) newBatch() *batch {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.newBatchLocked()
}

func (p *pipeline) newBatchLocked() *batch {
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return &batch{events: make([]outbox.Event, 0, 16)}
}

func (p *pipeline) recycleLocked(b *batch) {
	if len(p.free) >= maxFreeBatches {
		return
	}
	b.events, b.bytes, b.txn, b.xid = b.events[:0], 0, 0, 0
	p.free = append(p.free, b)
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
