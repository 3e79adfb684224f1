package mcpaudit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// errNoData: follow mode, no whole line is there yet; ask again later.
var errNoData = errors.New("no whole line yet")

// readChunk is how much tail reads from the file at a time, bytes.
const readChunk = 64 << 10

// tailEvents receives what tail notices besides lines (the instance counts and logs it).
type tailEvents interface {
	skipped(reason Reason, detail string)
	rotated(path string)
	truncated(path string, size int64)
	waiting(path string, err error)
}

// tail reads whole lines, without their newline, from the file at path.
//
// Without follow it stops at the end of the file (io.EOF); a last line without a
// newline is reported torn and dropped, since the gateway only ever writes whole lines.
//
// With follow, the end of the file means "no line yet" (errNoData) and a line without
// its newline is held until the newline arrives. It also follows the file when it is
//   - rotated by rename: the path names a new file; the old one is read to its end
//     (the writer may have added lines before renaming), then the new one from 0;
//   - truncated (copy-truncate): the file is shorter than the last whole line read;
//     reading restarts at 0. A truncation followed by more writes than were read before
//     the next look goes unnoticed (as with tail -F); the gateway itself rotates by rename;
//   - cut back within a line not yet whole (the gateway takes back a torn write): a
//     partial line is never kept across a wait, it is read again from its start;
//   - absent at open: it is waited for.
type tail struct {
	path     string
	follow   bool
	maxLine  int
	events   tailEvents
	f        *os.File
	off      int64  // bytes of f read so far: the file offset of buf's end
	lineOff  int64  // file offset where the line being assembled starts
	buf      []byte // bytes read, not yet consumed: buf[start:]
	start    int
	skipping bool // inside a line found too long: drop bytes up to its newline
	draining bool // path names a newer file: finish this one first
}

// openTail opens path for reading lines. Without follow the file must exist.
func openTail(path string, follow bool, maxLine int, events tailEvents) (*tail, error) {
	t := &tail{path: path, follow: follow, maxLine: maxLine, events: events}
	f, err := os.Open(path)
	if err != nil {
		if !follow || !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		events.waiting(path, err)
		return t, nil
	}
	t.f = f
	return t, nil
}

// Close releases the file.
func (t *tail) Close() error {
	if t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f = nil
	return err
}

// next returns the next whole line (valid until the next call), io.EOF at the end of a
// file read without follow, errNoData in follow mode when no whole line is there, or the
// error of a failed read.
func (t *tail) next() ([]byte, error) {
	for {
		if line, ok := t.cutLine(); ok {
			return line, nil
		}
		if t.f != nil {
			n, err := t.fill()
			if n > 0 {
				continue
			}
			if err != nil && err != io.EOF {
				return nil, fmt.Errorf("reading %s: %w", t.path, err)
			}
		}
		// At the end of the file (or none is open yet).
		if !t.follow {
			t.dropPartial()
			return nil, io.EOF
		}
		switched, err := t.checkFile()
		if err != nil {
			return nil, err
		}
		if !switched {
			if err := t.rewindPartial(); err != nil {
				return nil, err
			}
			return nil, errNoData
		}
	}
}

// cutLine takes the next whole line out of buf. Lines longer than maxLine are skipped
// (reported once each); so is a partial line that has already grown past it.
func (t *tail) cutLine() ([]byte, bool) {
	for {
		pending := t.buf[t.start:]
		i := bytes.IndexByte(pending, '\n')
		if i < 0 {
			if !t.skipping && len(pending) > t.maxLine {
				t.events.skipped(ReasonTooLong, fmt.Sprintf("a line longer than %d bytes at offset %d", t.maxLine, t.lineOff))
				t.skipping = true
			}
			if t.skipping { // the bytes of an over-long line are not kept
				t.buf, t.start = t.buf[:0], 0
			}
			return nil, false
		}
		line := pending[:i]
		t.start += i + 1
		t.lineOff = t.off - int64(len(t.buf)-t.start)
		if t.skipping {
			t.skipping = false
			continue
		}
		if len(line) > t.maxLine {
			t.events.skipped(ReasonTooLong, fmt.Sprintf("a line of %d bytes (limit %d) at offset %d", len(line), t.maxLine, t.lineOff-int64(len(line))-1))
			continue
		}
		return line, true
	}
}

// fill reads more of the file into buf.
func (t *tail) fill() (int, error) {
	if t.start > 0 { // move the partial line to the front
		n := copy(t.buf, t.buf[t.start:])
		t.buf, t.start = t.buf[:n], 0
	}
	if cap(t.buf)-len(t.buf) < readChunk {
		grown := make([]byte, len(t.buf), 2*cap(t.buf)+readChunk)
		copy(grown, t.buf)
		t.buf = grown
	}
	n, err := t.f.Read(t.buf[len(t.buf):cap(t.buf)])
	t.buf = t.buf[:len(t.buf)+n]
	t.off += int64(n)
	return n, err
}

// dropPartial forgets a line that will never be completed (end of a file that is done),
// reporting it torn unless it was already reported too long.
func (t *tail) dropPartial() {
	if len(t.buf) > t.start && !t.skipping {
		t.events.skipped(ReasonTorn, fmt.Sprintf("%d bytes without a newline at offset %d of %s", len(t.buf)-t.start, t.lineOff, t.path))
	}
	t.buf, t.start, t.skipping = t.buf[:0], 0, false
}

// rewindPartial makes the next read start again at the line not yet whole, rather than
// keep its bytes: a writer that takes back a torn write and then writes more can leave
// other bytes there by then. (An over-long line being skipped is not re-read.)
func (t *tail) rewindPartial() error {
	if t.f == nil || t.skipping || len(t.buf) == t.start {
		return nil
	}
	return t.restartAt(t.lineOff)
}

// restartAt positions f at off with nothing buffered.
func (t *tail) restartAt(off int64) error {
	if _, err := t.f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("seeking in %s: %w", t.path, err)
	}
	t.off, t.lineOff = off, off
	t.buf, t.start, t.skipping = t.buf[:0], 0, false
	return nil
}

// checkFile looks, at the end of the open file (follow mode), whether it was truncated
// or replaced at its path. It reports whether reading should go on at once.
func (t *tail) checkFile() (bool, error) {
	if t.f == nil {
		f, err := os.Open(t.path)
		if err != nil {
			return false, nil // still absent
		}
		t.f = f
		return true, t.restartAt(0)
	}
	held, err := t.f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", t.path, err)
	}
	if size := held.Size(); size < t.off {
		if size >= t.lineOff {
			// Cut back within the line being assembled: a writer took back a torn write.
			return true, t.restartAt(t.lineOff)
		}
		t.dropPartial()
		t.events.truncated(t.path, size)
		return true, t.restartAt(0)
	}
	named, err := os.Stat(t.path)
	if err != nil {
		return false, nil // renamed away, no successor yet: keep reading the file held
	}
	if os.SameFile(held, named) {
		t.draining = false // unchanged (or renamed back)
		return false, nil
	}
	if !t.draining {
		t.draining = true // one more read to its end: lines written before the rename
		return true, nil
	}
	f, err := os.Open(t.path)
	if err != nil {
		return false, nil // replaced again meanwhile; look next time
	}
	t.dropPartial()
	t.f.Close()
	t.f, t.draining = f, false
	t.events.rotated(t.path)
	return true, t.restartAt(0)
}

// progress is the fraction of the file read so far (without follow; 0 otherwise).
func (t *tail) progress() float64 {
	if t.follow || t.f == nil {
		return 0
	}
	fi, err := t.f.Stat()
	if err != nil || fi.Size() == 0 {
		return 0
	}
	done := float64(t.lineOff) / float64(fi.Size())
	if done > 1 {
		done = 1
	}
	return done
}
