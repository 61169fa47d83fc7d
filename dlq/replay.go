package dlq

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// pollBatch is the most records one poll hands over: each batch is
// re-published with one WriteMessages call and then committed.
const pollBatch = 500

// sessionTimeout is the replay's group session: a replay killed without
// leaving the group blocks the next one (ErrGroupBusy) this long.
const sessionTimeout = 10 * time.Second

// settleTimeout bounds publishing and committing the current batch once the
// caller's context is done: an interrupted replay finishes the batch it
// holds rather than leave it published but uncommitted.
const settleTimeout = 30 * time.Second

// GroupFor returns the consumer group Replay uses by default: DefaultGroup,
// or DefaultGroup.<reason> when only records of one reason are replayed. A
// filtered replay commits past the records it skips, so sharing a group
// with an unfiltered one would make those records look done; its own group
// keeps them for a later replay (at the cost of a later unfiltered replay
// sending the filtered reason's records again — duplicates, never loss).
func GroupFor(reason string) string {
	if reason == "" {
		return DefaultGroup
	}
	return DefaultGroup + "." + reason
}

// ReplayOptions tune Replay.
type ReplayOptions struct {
	// Reason replays only records whose outbox.dlq.reason is Reason; the
	// others are skipped (and committed past). "" replays every reason.
	Reason string
	// Limit stops the replay after that many records were replayed; 0
	// means no limit. Records after the last one replayed stay for the
	// next run.
	Limit int
	// DryRun reads and decides as a replay would but publishes and
	// commits nothing.
	DryRun bool
	// Group is the consumer group whose committed offsets say where the
	// replay starts; "" means GroupFor(Reason).
	Group string
	// OnRecord, when set, is told about each record the replay handles,
	// before it is published. It must not block for long.
	OnRecord func(Decision)
}

// Action is what Replay does with a dead-letter record.
type Action string

// The actions.
const (
	ActionReplay        Action = "replay"
	ActionSkip          Action = "skip"           // its reason is not the one asked for
	ActionNotReplayable Action = "not_replayable" // see Decision.Why
)

// Decision is what Replay does with one record, for progress output.
type Decision struct {
	Entry
	Action Action
	// Why says why a record is not replayable: NotReplayableStub or
	// NotReplayableNoTopic.
	Why string
}

// ReplayResult counts what a replay did. Only records whose group offset
// was committed (or, in a dry run, that were read) are counted.
type ReplayResult struct {
	Group  string `json:"group"`
	DryRun bool   `json:"dry_run"`
	// Replayed counts records re-published and acked (in a dry run: that
	// would be).
	Replayed         int            `json:"replayed"`
	ReplayedByReason map[string]int `json:"replayed_by_reason"`
	// Skipped counts, by dead-letter reason, the records the reason filter
	// left out.
	Skipped map[string]int `json:"skipped"`
	// NotReplayable counts, by cause, matching records that cannot be
	// replayed (their value was not kept, or they name no topic).
	NotReplayable map[string]int `json:"not_replayable"`
	// LimitReached says the replay stopped at the limit with records left.
	LimitReached bool `json:"limit_reached"`
	// Table is what the replay of the dead-letter table in Postgres did;
	// nil when it did not run.
	Table *TableReplayResult `json:"table,omitempty"`
}

// Replay re-publishes the dead-letter records to their original topics:
// same key, value and headers, minus the outbox.dlq.* headers, plus
// outbox.replayed_from = "<dlq topic>/<partition>/<offset>".
//
// It consumes the dead-letter topic in a consumer group (see ReplayOptions)
// from the group's committed offsets (the start of the topic when there are
// none) up to the end offsets the topic had when Replay was called, and
// commits each batch's offsets only after the broker acked (acks=all) every
// record re-published from it. So a replay that stops, however it stops,
// resumes where it left off: nothing is lost, and at most the batch in
// flight is sent twice. It refuses a group that has active members
// (ErrGroupBusy).
//
// When ctx ends, the batch in hand is still published and committed
// (bounded by a timeout), and Replay returns what it did with ctx's error.
func Replay(ctx context.Context, cfg Config, opts ReplayOptions) (ReplayResult, error) {
	if opts.Group == "" {
		opts.Group = GroupFor(opts.Reason)
	}
	result := ReplayResult{
		Group:            opts.Group,
		DryRun:           opts.DryRun,
		ReplayedByReason: map[string]int{},
		Skipped:          map[string]int{},
		NotReplayable:    map[string]int{},
	}
	if err := cfg.check(); err != nil {
		return result, err
	}
	if opts.Limit < 0 {
		return result, fmt.Errorf("limit %d is negative", opts.Limit)
	}
	base, err := cfg.clientOpts()
	if err != nil {
		return result, err
	}
	admin, err := kgo.NewClient(base...)
	if err != nil {
		return result, fmt.Errorf("kafka client: %w", err)
	}
	defer admin.Close()
	partitions, exists, err := spans(ctx, admin, cfg.Topic)
	if err != nil || !exists {
		return result, err
	}
	progress := newProgress(cfg.Topic, partitions)
	if progress.empty() {
		return result, nil
	}
	if err := checkGroupIdle(ctx, admin, opts.Group); err != nil {
		return result, err
	}

	var writer *kafka.Writer
	if !opts.DryRun {
		w, closeWriter, err := cfg.newWriter()
		if err != nil {
			return result, err
		}
		defer closeWriter()
		writer = w
	}

	// franz-go consumes: a consumer group with explicit commits is what a
	// resumable replay needs (kgo.CommitRecords after the acks; kafka-go's
	// Reader commits only as it reads, in order, per message), and
	// BlockRebalanceOnPoll keeps a rebalance from moving a partition
	// between the publish and the commit of its batch. kafka-go produces,
	// as the relay does, so the records land in the partition the relay
	// would have chosen.
	pollCtx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()
	progress.wake = stopPolling
	cl, err := kgo.NewClient(append(base,
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.SessionTimeout(sessionTimeout),
		kgo.AdjustFetchOffsetsFn(progress.assigned),
		kgo.OnPartitionsRevoked(progress.revoked),
		kgo.OnPartitionsLost(progress.revoked),
	)...)
	if err != nil {
		return result, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.CloseAllowingRebalance()

	for !progress.empty() {
		if opts.Limit > 0 && result.Replayed >= opts.Limit {
			result.LimitReached = true
			break
		}
		fetches := cl.PollRecords(pollCtx, pollBatch)
		if err := ctx.Err(); err != nil {
			return result, fmt.Errorf("replay interrupted: %w", err)
		}
		if progress.empty() {
			break // woken up: the group's offsets were already at the end
		}
		if err := fetchError(fetches); err != nil {
			return result, fmt.Errorf("read dead-letter topic %q: %w", cfg.Topic, err)
		}
		b := handle(fetches, cfg.Topic, opts, progress, opts.Limit-result.Replayed)
		if !opts.DryRun && len(b.last) > 0 {
			if err := b.settle(ctx, writer, cl, opts.Group); err != nil {
				return result, err
			}
		}
		b.addTo(&result)
		cl.AllowRebalance()
	}
	return result, ctx.Err()
}

// batch is what one poll's records come to.
type batch struct {
	messages      []kafka.Message
	replayed      map[string]int // by dead-letter reason
	skipped       map[string]int
	notReplayable map[string]int
	last          map[int32]*kgo.Record // the last handled record of each partition
}

// handle decides what to do with each record of a poll, up to limit
// replayed records (no limit when limit <= 0 and the caller asked for none).
func handle(fetches kgo.Fetches, dlqTopic string, opts ReplayOptions, progress *progress, limit int) *batch {
	b := &batch{
		replayed:      map[string]int{},
		skipped:       map[string]int{},
		notReplayable: map[string]int{},
		last:          map[int32]*kgo.Record{},
	}
	full := false
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		for _, r := range ftp.Records {
			end, ok := progress.end(r.Partition)
			if full || !ok || r.Offset >= end {
				return // beyond the limit, or produced after the replay started
			}
			if opts.Limit > 0 && len(b.messages) >= limit {
				full = true
				return
			}
			d := Decision{Entry: entryOf(r)}
			switch {
			case opts.Reason != "" && d.Reason != opts.Reason:
				d.Action = ActionSkip
				b.skipped[d.Reason]++
			default:
				if d.Why = replayable(r); d.Why != "" {
					d.Action = ActionNotReplayable
					b.notReplayable[d.Why]++
				} else {
					d.Action = ActionReplay
					b.replayed[d.Reason]++
					b.messages = append(b.messages, replayMessage(dlqTopic, r))
				}
			}
			if opts.OnRecord != nil {
				opts.OnRecord(d)
			}
			b.last[r.Partition] = r
			if r.Offset >= end-1 {
				progress.finished(r.Partition)
			}
		}
	})
	return b
}

// settle publishes the batch and, once every record is acked, commits the
// offsets past its records. It goes on when ctx ends, within settleTimeout,
// so that an interrupted replay does not leave published records
// uncommitted.
func (b *batch) settle(ctx context.Context, w *kafka.Writer, cl *kgo.Client, group string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if len(b.messages) > 0 {
		if err := w.WriteMessages(ctx, b.messages...); err != nil {
			return fmt.Errorf("re-publish %d records: %w (their offsets were not committed: the next replay sends them again)", len(b.messages), err)
		}
	}
	records := make([]*kgo.Record, 0, len(b.last))
	for _, r := range b.last {
		records = append(records, r)
	}
	if err := cl.CommitRecords(ctx, records...); err != nil {
		return fmt.Errorf("commit offsets of group %q after re-publishing %d records: %w (the next replay sends them again)", group, len(b.messages), err)
	}
	return nil
}

func (b *batch) addTo(result *ReplayResult) {
	for reason, n := range b.replayed {
		result.Replayed += n
		result.ReplayedByReason[reason] += n
	}
	for reason, n := range b.skipped {
		result.Skipped[reason] += n
	}
	for why, n := range b.notReplayable {
		result.NotReplayable[why] += n
	}
}

// progress tracks which partitions of the dead-letter topic still hold
// records for this replay. The group's callbacks update it from the
// client's goroutine while the poll loop reads it.
type progress struct {
	topic string
	spans map[int32]span

	mu sync.Mutex
	// remaining maps each partition this member still has to read to the
	// end offset captured at the start.
	remaining    map[int32]int64
	assignedOnce bool
	// wake stops the poll loop's wait once nothing remains.
	wake func()
}

func newProgress(topic string, spans map[int32]span) *progress {
	p := &progress{topic: topic, spans: spans, remaining: map[int32]int64{}}
	for partition, s := range spans {
		if s.start < s.end {
			p.remaining[partition] = s.end
		}
	}
	return p
}

// assigned learns where the group starts reading each assigned partition
// (its committed offset, or the log start when there is none) and keeps
// only the partitions that hold records before their captured end.
func (p *progress) assigned(_ context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	mine := offsets[p.topic]
	if !p.assignedOnce {
		// Partitions another member got are not ours to wait for.
		for partition := range p.remaining {
			if _, ok := mine[partition]; !ok {
				delete(p.remaining, partition)
			}
		}
		p.assignedOnce = true
	}
	for partition, offset := range mine {
		s, ok := p.spans[partition]
		if !ok {
			continue // created after the replay started
		}
		from := max(offset.EpochOffset().Offset, s.start) // negative: no commit, read from the start
		if from < s.end {
			p.remaining[partition] = s.end
		} else {
			delete(p.remaining, partition)
		}
	}
	p.wakeIfDoneLocked()
	return offsets, nil
}

// revoked forgets partitions the group took away: their next owner
// resumes from this member's last commit.
func (p *progress) revoked(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, partition := range lost[p.topic] {
		delete(p.remaining, partition)
	}
	p.wakeIfDoneLocked()
}

func (p *progress) end(partition int32) (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	end, ok := p.remaining[partition]
	return end, ok
}

func (p *progress) finished(partition int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.remaining, partition)
}

func (p *progress) empty() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.remaining) == 0
}

func (p *progress) wakeIfDoneLocked() {
	if len(p.remaining) == 0 && p.wake != nil {
		p.wake()
	}
}
