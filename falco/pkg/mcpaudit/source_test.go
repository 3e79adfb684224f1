package mcpaudit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
)

// emitted is one event NextBatch produced.
type emitted struct {
	ts   uint64
	line string
}

// openInstance opens path with p; waits in follow mode return at once.
func openInstance(t *testing.T, p *Plugin, path string) *Instance {
	t.Helper()
	inst, err := p.Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	in := inst.(*Instance)
	in.sleep = func(time.Duration) {}
	t.Cleanup(func() {
		in.Close()
		in.Events().Free()
	})
	return in
}

// readUntil calls NextBatch (batches of size) until it returns an error, which is
// returned with the events delivered before it.
func readUntil(t *testing.T, in *Instance, size int) ([]emitted, error) {
	t.Helper()
	var out []emitted
	for calls := 0; calls < 10000; calls++ {
		w := newFakeEventWriters(size)
		n, err := in.NextBatch(nil, w)
		for _, e := range w.evts[:n] {
			out = append(out, emitted{e.ts, e.payload()})
		}
		if err != nil {
			return out, err
		}
	}
	t.Fatal("NextBatch never reported EOF or a timeout")
	return nil, nil
}

// expectRead checks that reading yields exactly lines, then err.
func expectRead(t *testing.T, in *Instance, wantErr error, lines ...string) {
	t.Helper()
	got, err := readUntil(t, in, 4)
	if !errors.Is(err, wantErr) {
		t.Fatalf("read ended with %v, want %v", err, wantErr)
	}
	if len(got) != len(lines) {
		t.Fatalf("got %d events, want %d:\n%v", len(got), len(lines), got)
	}
	for i, e := range got {
		if e.line != lines[i] {
			t.Errorf("event %d = %s\nwant %s", i, e.line, lines[i])
		}
		var m map[string]any
		d := json.NewDecoder(strings.NewReader(lines[i]))
		d.UseNumber()
		if err := d.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if ts := m["timestamp"].(json.Number).String(); fmt.Sprint(e.ts) != ts {
			t.Errorf("event %d: timestamp %d, the line says %s", i, e.ts, ts)
		}
	}
}

// appendTo appends text to the file at path, as another writer would.
func appendTo(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// numbered is a good line whose seq (and timestamp) is n.
func numbered(t *testing.T, n int) string {
	return line(t, map[string]any{"seq": uint64(n), "timestamp": preciseTs + uint64(n)})
}

func lines(ls ...string) string {
	return strings.Join(ls, "\n") + "\n"
}

func auditFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPlainReadEndsAtEOF(t *testing.T) {
	a, b, c := numbered(t, 1), numbered(t, 2), line(t, map[string]any{"timestamp": preciseTs})
	in := openInstance(t, newPlugin(t, ""), auditFile(t, lines(a, b, c)))
	expectRead(t, in, sdk.ErrEOF, a, b, c)
	expectRead(t, in, sdk.ErrEOF) // and again
	if s := in.Stats(); s.Events != 3 || s.SkippedTotal() != 0 {
		t.Errorf("stats %s", s)
	}
	if pct, str := in.Progress(nil); pct != 1 || !strings.HasPrefix(str, "events=3 skipped=0") {
		t.Errorf("progress %v %q", pct, str)
	}
}

func TestAnEmptyFileEndsAtOnce(t *testing.T) {
	in := openInstance(t, newPlugin(t, ""), auditFile(t, ""))
	expectRead(t, in, sdk.ErrEOF)
}

func TestManyLinesSpanBatches(t *testing.T) {
	var want []string
	for i := 1; i <= 3*batchSize+5; i++ {
		want = append(want, numbered(t, i))
	}
	in := openInstance(t, newPlugin(t, ""), auditFile(t, lines(want...)))
	got, err := readUntil(t, in, batchSize)
	if !errors.Is(err, sdk.ErrEOF) || len(got) != len(want) {
		t.Fatalf("%d events, %v", len(got), err)
	}
	for i := range want {
		if got[i].line != want[i] {
			t.Fatalf("event %d out of order", i)
		}
	}
}

func TestBadLinesAreSkippedCountedAndTheStreamGoesOn(t *testing.T) {
	var content []string
	var good []string
	var want [numReasons]uint64
	for i, bad := range badLines(t) {
		g := numbered(t, i+1)
		content = append(content, g, bad.line)
		good = append(good, g)
		want[bad.reason]++
	}
	tooLong := line(t, map[string]any{"command": strings.Repeat("x", 2000)})
	last := numbered(t, 999)
	content = append(content, tooLong, last)
	good = append(good, last)
	want[ReasonTooLong]++
	// A last line without its newline: the gateway writes whole lines, so it is torn.
	torn := numbered(t, 1000)
	want[ReasonTorn]++
	text := lines(content...) + torn[:len(torn)/2]

	in := openInstance(t, newPlugin(t, `{"maxLineBytes": 1024}`), auditFile(t, text))
	expectRead(t, in, sdk.ErrEOF, good...)
	s := in.Stats()
	if s.Skipped != want || s.Events != uint64(len(good)) {
		t.Errorf("stats %s\nwant skipped %v", s, want)
	}
}

func TestAWholeLastLineWithoutNewlineIsTornWithoutFollow(t *testing.T) {
	a, b := numbered(t, 1), numbered(t, 2)
	in := openInstance(t, newPlugin(t, ""), auditFile(t, a+"\n"+b))
	expectRead(t, in, sdk.ErrEOF, a)
	if s := in.Stats(); s.Skipped[ReasonTorn] != 1 {
		t.Errorf("stats %s", s)
	}
}

func TestOpenParams(t *testing.T) {
	p := newPlugin(t, "")
	if _, err := p.Open("  "); err == nil {
		t.Error("empty open params must fail")
	}
	if _, err := p.Open(filepath.Join(t.TempDir(), "none.jsonl")); err == nil {
		t.Error("a missing file must fail without follow")
	}
}

func TestFollowDeliversAppendedLines(t *testing.T) {
	a, b, c := numbered(t, 1), numbered(t, 2), numbered(t, 3)
	path := auditFile(t, lines(a))
	in := openInstance(t, newPlugin(t, `{"follow": true}`), path)
	expectRead(t, in, sdk.ErrTimeout, a)
	expectRead(t, in, sdk.ErrTimeout)
	appendTo(t, path, lines(b, c))
	expectRead(t, in, sdk.ErrTimeout, b, c)
}

func TestFollowHoldsALineUntilItsNewline(t *testing.T) {
	a, b := numbered(t, 1), numbered(t, 2)
	path := auditFile(t, lines(a)+b[:10])
	in := openInstance(t, newPlugin(t, `{"follow": true}`), path)
	expectRead(t, in, sdk.ErrTimeout, a)
	appendTo(t, path, b[10:30])
	expectRead(t, in, sdk.ErrTimeout)
	appendTo(t, path, b[30:]+"\n")
	expectRead(t, in, sdk.ErrTimeout, b)
	expectRead(t, in, sdk.ErrTimeout)
	if s := in.Stats(); s.Events != 2 || s.SkippedTotal() != 0 {
		t.Errorf("stats %s", s)
	}
}

func TestFollowRotationByRename(t *testing.T) {
	a, b, c, d, e := numbered(t, 1), numbered(t, 2), numbered(t, 3), numbered(t, 4), numbered(t, 5)
	path := auditFile(t, lines(a, b))
	in := openInstance(t, newPlugin(t, `{"follow": true}`), path)
	expectRead(t, in, sdk.ErrTimeout, a, b)

	// The writer still holds the old file: what it writes before switching, after the
	// rename, is read before the new file.
	old, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	expectRead(t, in, sdk.ErrTimeout) // renamed away, no successor yet
	appendTo(t, path, lines(d))
	if _, err := old.WriteString(lines(c)); err != nil {
		t.Fatal(err)
	}
	old.Close()
	appendTo(t, path, lines(e))
	expectRead(t, in, sdk.ErrTimeout, c, d, e)
	if s := in.Stats(); s.Rotations != 1 || s.Truncations != 0 || s.SkippedTotal() != 0 {
		t.Errorf("stats %s", s)
	}

	// And once more, with the successor already there when the rotation is noticed.
	f := numbered(t, 6)
	if err := os.Rename(path, path+".2"); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, lines(f))
	expectRead(t, in, sdk.ErrTimeout, f)
	if s := in.Stats(); s.Rotations != 2 {
		t.Errorf("stats %s", s)
	}
}

func TestFollowCopyTruncate(t *testing.T) {
	a, b, c, d := numbered(t, 1), numbered(t, 2), numbered(t, 3), numbered(t, 4)
	path := auditFile(t, lines(a, b, c))
	in := openInstance(t, newPlugin(t, `{"follow": true}`), path)
	expectRead(t, in, sdk.ErrTimeout, a, b, c)
	// copytruncate: the content is copied elsewhere, the file cut to 0, writing goes on.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, lines(d))
	expectRead(t, in, sdk.ErrTimeout, d)
	if s := in.Stats(); s.Truncations != 1 || s.Rotations != 0 || s.Events != 4 {
		t.Errorf("stats %s", s)
	}
}

func TestFollowATornWriteTakenBackIsNeverEmitted(t *testing.T) {
	// The gateway cuts a failed write back to its last whole line and writes again later
	// (gateway/audit/sinks.py): the torn bytes must not merge with the next line, even
	// when the file has grown past them by the time the plugin looks again.
	a, b := numbered(t, 1), line(t, map[string]any{"seq": uint64(2), "command": strings.Repeat("y", 200)})
	path := auditFile(t, lines(a))
	in := openInstance(t, newPlugin(t, `{"follow": true}`), path)
	expectRead(t, in, sdk.ErrTimeout, a)
	appendTo(t, path, `{"schema_version": "1", "timest`)
	expectRead(t, in, sdk.ErrTimeout)
	if err := os.Truncate(path, int64(len(a)+1)); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, lines(b))
	expectRead(t, in, sdk.ErrTimeout, b)
	if s := in.Stats(); s.SkippedTotal() != 0 || s.Truncations != 0 || s.Events != 2 {
		t.Errorf("stats %s", s)
	}
}

func TestFollowWaitsForTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	in := openInstance(t, newPlugin(t, `{"follow": true}`), path)
	expectRead(t, in, sdk.ErrTimeout)
	a := numbered(t, 1)
	appendTo(t, path, lines(a))
	expectRead(t, in, sdk.ErrTimeout, a)
}

func TestFollowSkipsAGrowingOverlongLineOnce(t *testing.T) {
	long := line(t, map[string]any{"command": strings.Repeat("z", 3000)})
	a, b := numbered(t, 1), numbered(t, 2)
	path := auditFile(t, lines(a)+long[:600])
	in := openInstance(t, newPlugin(t, `{"follow": true, "maxLineBytes": 1024}`), path)
	expectRead(t, in, sdk.ErrTimeout, a)
	appendTo(t, path, long[600:1800])
	expectRead(t, in, sdk.ErrTimeout)
	appendTo(t, path, long[1800:2500])
	expectRead(t, in, sdk.ErrTimeout)
	appendTo(t, path, long[2500:]+"\n"+lines(b))
	expectRead(t, in, sdk.ErrTimeout, b)
	if s := in.Stats(); s.Skipped[ReasonTooLong] != 1 || s.SkippedTotal() != 1 {
		t.Errorf("stats %s", s)
	}
}

func TestFollowWaitsThePollIntervalOnce(t *testing.T) {
	path := auditFile(t, "")
	in := openInstance(t, newPlugin(t, `{"follow": true, "pollIntervalMs": 30}`), path)
	var waits []time.Duration
	in.sleep = func(d time.Duration) { waits = append(waits, d) }
	n, err := in.NextBatch(nil, newFakeEventWriters(4))
	if n != 0 || !errors.Is(err, sdk.ErrTimeout) || len(waits) != 1 || waits[0] != 30*time.Millisecond {
		t.Errorf("NextBatch = %d, %v after waits %v", n, err, waits)
	}
}

func TestBadLinesAreLoggedRateLimited(t *testing.T) {
	var logged []string
	p := newPlugin(t, "")
	var content []string
	for i := 0; i < 50; i++ {
		content = append(content, "not json")
	}
	in := openInstance(t, p, auditFile(t, lines(content...)))
	in.logger.SetOutput(writerFunc(func(b []byte) (int, error) { logged = append(logged, string(b)); return len(b), nil }))
	expectRead(t, in, sdk.ErrEOF)
	if s := in.Stats(); s.Skipped[ReasonNotJSON] != 50 {
		t.Errorf("stats %s", s)
	}
	if len(logged) != 1 {
		t.Errorf("50 bad lines at once logged %d lines, want 1: %q", len(logged), logged)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }
