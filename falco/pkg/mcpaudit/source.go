package mcpaudit

import (
	"errors"
	"fmt"
	"io"
	"log"
	"strings"
	"sync"
	"time"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk/plugins/source"
)

// batchSize is how many events one NextBatch can return. Each event buffer holds
// maxLineBytes, so the batch reserves batchSize*maxLineBytes (64 MiB at the default;
// untouched pages cost no memory).
const batchSize = 64

// logEvery is the least time between two log lines about bad lines or file changes;
// the ones in between are counted and summed up in the next line.
const logEvery = 5 * time.Second

// Stats counts what an open instance has read.
type Stats struct {
	// Events is the number of lines delivered as events.
	Events uint64
	// Skipped counts the bad lines skipped, by reason.
	Skipped [numReasons]uint64
	// Rotations is how often the path was found to name a new file (rotation by rename).
	Rotations uint64
	// Truncations is how often the file was found truncated (copy-truncate).
	Truncations uint64
}

// SkippedTotal is the number of bad lines skipped, all reasons together.
func (s Stats) SkippedTotal() uint64 {
	var n uint64
	for _, c := range s.Skipped {
		n += c
	}
	return n
}

// String is the counters as "events=N skipped=N not_json=N ... rotations=N truncations=N".
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "events=%d skipped=%d", s.Events, s.SkippedTotal())
	for r := Reason(0); r < numReasons; r++ {
		fmt.Fprintf(&b, " %s=%d", r, s.Skipped[r])
	}
	fmt.Fprintf(&b, " rotations=%d truncations=%d", s.Rotations, s.Truncations)
	return b.String()
}

// Instance is one open audit file: it implements source.Instance, sdk.Closer and
// sdk.Progresser.
type Instance struct {
	source.BaseInstance
	tail  *tail
	poll  time.Duration
	sleep func(time.Duration)

	mu    sync.Mutex // stats are read by Stats and Progress, maybe from another thread
	stats Stats

	logger     *log.Logger
	nextLog    time.Time
	suppressed int
}

// Open opens the audit file named by params (a path) for reading as configured by Init.
// Without follow the file must exist; with follow it may appear later.
func (p *Plugin) Open(params string) (source.Instance, error) {
	path := strings.TrimSpace(params)
	if path == "" {
		return nil, errors.New("open params: name the audit file (a path)")
	}
	cfg := p.Config
	if cfg.MaxLineBytes == 0 { // Open before Init: a Plugin built by hand
		cfg = DefaultConfig()
	}
	in := &Instance{poll: cfg.pollInterval(), sleep: time.Sleep, logger: p.log()}
	t, err := openTail(path, cfg.Follow, int(cfg.MaxLineBytes), in)
	if err != nil {
		return nil, fmt.Errorf("audit file: %w", err) // err names the path
	}
	in.tail = t
	evts, err := sdk.NewEventWriters(batchSize, int64(cfg.MaxLineBytes))
	if err != nil {
		t.Close()
		return nil, err
	}
	in.SetEvents(evts)
	return in, nil
}

// NextBatch fills evts with the next lines, each checked by DecodeLine; a bad line is
// skipped, counted and logged, never the end of the stream. The event's payload is the
// raw line and its timestamp the line's timestamp key.
//
// Without follow, the end of the file ends the stream (sdk.ErrEOF). With follow, when no
// line is there it waits up to the poll interval once, then reports sdk.ErrTimeout so
// that Falco asks again.
func (in *Instance) NextBatch(_ sdk.PluginState, evts sdk.EventWriters) (int, error) {
	n, waited := 0, false
	for n < evts.Len() {
		line, err := in.tail.next()
		switch {
		case err == nil:
		case errors.Is(err, errNoData):
			if n > 0 {
				return n, nil
			}
			if waited {
				return 0, sdk.ErrTimeout
			}
			in.sleep(in.poll)
			waited = true
			continue
		case errors.Is(err, io.EOF):
			if n > 0 { // the next call reports the end
				return n, nil
			}
			return 0, sdk.ErrEOF
		default:
			return n, err
		}
		rec, err := DecodeLine(line)
		if err != nil {
			var lerr *LineError
			errors.As(err, &lerr)
			in.skipped(lerr.Reason, lerr.Detail)
			continue
		}
		evt := evts.Get(n)
		if _, err := evt.Writer().Write(line); err != nil {
			return n, fmt.Errorf("writing event: %w", err)
		}
		evt.SetTimestamp(rec.Timestamp())
		n++
		in.mu.Lock()
		in.stats.Events++
		in.mu.Unlock()
	}
	return n, nil
}

// Stats returns the counters so far.
func (in *Instance) Stats() Stats {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.stats
}

// Progress reports the fraction of the file read (0 in follow mode) and the counters.
func (in *Instance) Progress(sdk.PluginState) (float64, string) {
	return in.tail.progress(), in.Stats().String()
}

// Close closes the file.
func (in *Instance) Close() {
	in.tail.Close()
}

// skipped counts a bad line and logs it (tailEvents).
func (in *Instance) skipped(reason Reason, detail string) {
	in.mu.Lock()
	in.stats.Skipped[reason]++
	in.mu.Unlock()
	in.logf("skipped a bad line (%s): %s", reason, detail)
}

// rotated counts a rotation and logs it (tailEvents).
func (in *Instance) rotated(path string) {
	in.mu.Lock()
	in.stats.Rotations++
	in.mu.Unlock()
	in.logf("%s was rotated: reading the new file from its start", path)
}

// truncated counts a truncation and logs it (tailEvents).
func (in *Instance) truncated(path string, size int64) {
	in.mu.Lock()
	in.stats.Truncations++
	in.mu.Unlock()
	in.logf("%s was truncated to %d bytes: reading it again from its start", path, size)
}

// waiting logs that the file is absent and waited for (tailEvents).
func (in *Instance) waiting(path string, err error) {
	in.logf("waiting for %s to appear (%v)", path, err)
}

// logf logs at most one line per logEvery; the lines held back are counted in the next.
func (in *Instance) logf(format string, args ...any) {
	now := time.Now()
	if now.Before(in.nextLog) {
		in.suppressed++
		return
	}
	msg := fmt.Sprintf(format, args...)
	if in.suppressed > 0 {
		msg += fmt.Sprintf(" (and %d similar messages in the last %s)", in.suppressed, logEvery)
		in.suppressed = 0
	}
	in.nextLog = now.Add(logEvery)
	in.logger.Print(msg)
}
