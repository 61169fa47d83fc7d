package publisher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// send writes msgs in chunks that each make at most one batch per partition,
// settling every chunk, retries included, before the next one starts. So no
// record is ever queued behind a newer record of its partition. indexes[i]
// is the caller's index of msgs[i]; both slices are reordered in place.
func (p *Publisher) send(ctx context.Context, msgs []kafka.Message, indexes []int, failures []outbox.Failure) ([]outbox.Failure, error) {
	for len(msgs) > 0 {
		n := p.chunkLen(msgs)
		var err error
		failures, err = p.settle(ctx, msgs[:n], indexes[:n], failures)
		if err != nil {
			return nil, err
		}
		msgs, indexes = msgs[n:], indexes[n:]
	}
	if len(failures) > 1 {
		slices.SortFunc(failures, func(a, b outbox.Failure) int { return cmp.Compare(a.Index, b.Index) })
	}
	return failures, nil
}

// chunkLen is how many of msgs fit in one WriteMessages call that kafka-go
// turns into at most one batch per partition: BatchSize records and
// BatchBytes bytes, the limits at which it starts a new batch.
func (p *Publisher) chunkLen(msgs []kafka.Message) int {
	var bytes int64
	for i := range msgs {
		if i == p.cfg.BatchSize {
			return i
		}
		bytes += recordSize(&msgs[i])
		if bytes > p.cfg.BatchBytes && i > 0 {
			return i
		}
	}
	return len(msgs)
}

// settle writes one chunk until each of its records is acked or has failed
// permanently, retrying the rest with backoff. It returns an error only when
// ctx ends first or the broker refuses the credentials (outbox.ErrAuthentication).
func (p *Publisher) settle(ctx context.Context, msgs []kafka.Message, indexes []int, failures []outbox.Failure) ([]outbox.Failure, error) {
	for retry := 1; ; retry++ {
		err := p.write(ctx, msgs)
		if err == nil {
			p.unknown.written(msgs)
			if retry > 1 {
				p.log.Info().Int("retries", retry-1).Int("records", len(msgs)).Str("topic", msgs[0].Topic).
					Msg("kafka write succeeded after retries")
			}
			return failures, nil
		}
		if ctx.Err() != nil {
			return failures, fmt.Errorf("publish %d records: %w", len(msgs), ctx.Err())
		}
		// Retrying wrong credentials only hides them from the operator.
		if errors.Is(err, kafka.SASLAuthenticationFailed) {
			return failures, fmt.Errorf("publish %d records: %w: %w", len(msgs), outbox.ErrAuthentication, err)
		}

		var writeErrs kafka.WriteErrors
		if errors.As(err, &writeErrs) && len(writeErrs) == len(msgs) {
			var n int
			var ctxErr error
			failures, n, err, ctxErr = p.sortOut(ctx, msgs, indexes, writeErrs, failures)
			if ctxErr != nil {
				return failures, ctxErr
			}
			if n == 0 {
				return failures, nil
			}
			msgs, indexes = msgs[:n], indexes[:n]
		} else if isUnknownTopic(err) {
			// The metadata lookup of one of the call's topics failed, with
			// no word on which: with several topics, each is settled on its
			// own (their records share no partition, so no order is lost).
			if groups, groupIndexes := byTopic(msgs, indexes); len(groups) > 1 {
				for g := range groups {
					if failures, err = p.settle(ctx, groups[g], groupIndexes[g], failures); err != nil {
						return failures, err
					}
				}
				return failures, nil
			}
			if gone := p.unknown.failed(msgs[0].Topic, err); gone != nil {
				p.log.Error().Str("topic", msgs[0].Topic).Int("records", len(msgs)).Dur("timeout", p.cfg.UnknownTopicTimeout).
					Msg("topic unknown to the brokers for the whole unknown-topic timeout: its records go to the dead-letter topic")
				for _, i := range indexes {
					failures = append(failures, outbox.Failure{Index: i, Reason: outbox.ReasonUnknownTopic, Err: gone})
				}
				return failures, nil
			}
		} else if c := classify(err); c.permanent() {
			// The call was refused before anything was queued (the
			// metadata of a topic, say), with no word on which record.
			if len(msgs) == 1 {
				return append(failures, outbox.Failure{Index: indexes[0], Reason: c.reason, Err: err}), nil
			}
			return p.oneByOne(ctx, msgs, indexes, failures)
		}

		if p.cfg.OnRetry != nil {
			p.cfg.OnRetry(errorKind(err))
		}
		wait := p.backoff(retry)
		p.log.Warn().Int("retry", retry).Int("records", len(msgs)).Str("topic", msgs[0].Topic).
			Dur("backoff", wait).Err(err).Msg("kafka write failed, retrying")
		if err := sleep(ctx, wait); err != nil {
			return failures, fmt.Errorf("publish %d records: %w", len(msgs), err)
		}
	}
}

// sortOut handles the per-record errors of one write: permanent failures
// become Failures (after a culprit search when a batch of several records was
// rejected for something one of them may have caused), and the records to
// retry are moved, in order, to the front of msgs and indexes. It returns
// how many there are and the first of their errors; ctxErr is set when ctx
// ended during a culprit search.
//
// All records of one partition share one batch and so one error: the records
// to retry and those searched one by one are never of the same partition, so
// their relative order does not matter.
func (p *Publisher) sortOut(ctx context.Context, msgs []kafka.Message, indexes []int, writeErrs kafka.WriteErrors, failures []outbox.Failure) (_ []outbox.Failure, n int, retryErr, ctxErr error) {
	permanent := 0
	for _, err := range writeErrs {
		if err != nil && classify(err).permanent() {
			permanent++
		}
	}
	for i, err := range writeErrs {
		if err == nil {
			continue
		}
		c := classify(err)
		if isUnknownTopic(err) {
			if gone := p.unknown.failed(msgs[i].Topic, err); gone != nil {
				c = classification{reason: outbox.ReasonUnknownTopic, topicWide: true}
				err = gone
			}
		}
		switch {
		case !c.permanent():
			msgs[n], indexes[n] = msgs[i], indexes[i]
			n++
			if retryErr == nil {
				retryErr = err
			}
		case permanent == 1 || c.topicWide:
			// Alone in its batch, or a verdict on the whole topic.
			failures = append(failures, outbox.Failure{Index: indexes[i], Reason: c.reason, Err: err})
		default:
			failures, ctxErr = p.settle(ctx, msgs[i:i+1], indexes[i:i+1], failures)
			if ctxErr != nil {
				return failures, 0, nil, ctxErr
			}
		}
	}
	return failures, n, retryErr, nil
}

// oneByOne settles each record on its own, in order.
func (p *Publisher) oneByOne(ctx context.Context, msgs []kafka.Message, indexes []int, failures []outbox.Failure) ([]outbox.Failure, error) {
	for i := range msgs {
		var err error
		failures, err = p.settle(ctx, msgs[i:i+1], indexes[i:i+1], failures)
		if err != nil {
			return failures, err
		}
	}
	return failures, nil
}

// write makes one attempt at msgs.
func (p *Publisher) write(ctx context.Context, msgs []kafka.Message) error {
	if w, ok := p.producer.(*kafka.Writer); ok {
		// kafka-go gives every partition batch room for BatchSize messages
		// up front (writeBatch.add): with the default 1000 and small calls
		// that is most of the relay's allocation. A call never holds more
		// than len(msgs), so this keeps one batch per partition per call.
		// Only this goroutine reads the field (in WriteMessages), and no
		// call is in flight while it changes.
		w.BatchSize = len(msgs)
	}
	a := startAttempt(ctx, len(msgs), p.cfg.WriteTimeout)
	p.balancer.current = a
	err := p.producer.WriteMessages(a.ctx, msgs...)
	p.balancer.current = nil
	a.finish()
	if a.abandoned() {
		// The context ended in the instant between the last partition
		// choice and the wait: kafka-go still holds this call's batches.
		// Closing the Writer waits for them; nothing may be sent before.
		if cerr := p.producer.Close(); cerr != nil {
			p.log.Warn().Err(cerr).Msg("close abandoned kafka writer")
		}
		p.producer = p.newProducer()
	}
	return err
}

// backoff is the wait before the given retry: BackoffMin doubled per
// earlier retry, at most BackoffMax.
func (p *Publisher) backoff(retry int) time.Duration {
	d := p.cfg.BackoffMin
	for i := 1; i < retry && d < p.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, p.cfg.BackoffMax)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
