//go:build harness

// Command harness drives a built mcp_audit plugin the way Falco does, for tests.
//
// Build it with the build tag "harness" and the SDK's plugin API headers on the include
// path (the tag keeps a plain "go vet ./..." free of the header):
//
//	CGO_CFLAGS=-I$(go list -m -f '{{.Dir}}' github.com/falcosecurity/plugin-sdk-go)/pkg/sdk \
//	    go build -tags harness -o harness ./test/harness
//
// It first loads the library through plugin-sdk-go's pkg/loader, which checks the
// required API version, the symbols, the info, the fields and the init config against
// the init schema. Then it dlopens the library itself and calls the plugin API: init,
// open, next_batch until the end, extract_fields for every field of every event,
// get_progress, close, destroy.
//
//	harness -plugin PATH/libmcp_audit.so [-config JSON] -info
//	    one JSON object: {"name","id","event_source","version","required_api_version",
//	    "fields":[{"name","type"}...],"init_schema":{...}}
//	harness -plugin PATH/libmcp_audit.so [-config JSON] [-max-events N] [-idle D] FILE
//	    one JSON object per event: {"evtnum":N,"ts":NS,"fields":{"mcp.<name>":value...}}
//	    with the fields present only (uint64 as exact JSON integers), then a summary
//	    line on stderr: "harness: events=N batches=N timeouts=N plugin: <progress>".
//
// Exit status 0 on success; 1 with the plugin's last error when an API call fails; 2 on
// a usage error.
package main

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "plugin_api.h"

typedef struct {
	void *lib;
	plugin_api api;
} harness_plugin;

// harness_load dlopens the library as libsinsp does (resolve every symbol now, keep them
// out of the global namespace, and let the library bind to its own symbols first: it
// carries its own Go runtime) and fills api with the functions the harness calls.
static const char *harness_load(harness_plugin *p, const char *path) {
	memset(p, 0, sizeof(*p));
	p->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
	if (p->lib == NULL) {
		return dlerror();
	}
#define HARNESS_SYM(field, name)                                   \
	do {                                                           \
		*(void **)(&p->api.field) = dlsym(p->lib, name);           \
		if (p->api.field == NULL) {                                \
			return "the plugin lacks the symbol " name;            \
		}                                                          \
	} while (0)
	HARNESS_SYM(get_required_api_version, "plugin_get_required_api_version");
	HARNESS_SYM(init, "plugin_init");
	HARNESS_SYM(destroy, "plugin_destroy");
	HARNESS_SYM(get_last_error, "plugin_get_last_error");
	HARNESS_SYM(get_event_source, "plugin_get_event_source");
	HARNESS_SYM(open, "plugin_open");
	HARNESS_SYM(close, "plugin_close");
	HARNESS_SYM(get_progress, "plugin_get_progress");
	HARNESS_SYM(next_batch, "plugin_next_batch");
	HARNESS_SYM(extract_fields, "plugin_extract_fields");
#undef HARNESS_SYM
	return NULL;
}

static ss_plugin_t *harness_init(harness_plugin *p, const char *config, ss_plugin_rc *rc) {
	ss_plugin_init_input in;
	memset(&in, 0, sizeof(in));
	in.config = config;
	return p->api.init(&in, rc);
}

static const char *harness_last_error(harness_plugin *p, ss_plugin_t *s) {
	return p->api.get_last_error(s);
}

static const char *harness_event_source(harness_plugin *p) {
	return p->api.get_event_source();
}

static ss_instance_t *harness_open(harness_plugin *p, ss_plugin_t *s, const char *params, ss_plugin_rc *rc) {
	return p->api.open(s, params, rc);
}

static ss_plugin_rc harness_next_batch(harness_plugin *p, ss_plugin_t *s, ss_instance_t *h,
                                       uint32_t *nevts, ss_plugin_event ***evts) {
	return p->api.next_batch(s, h, nevts, evts);
}

static ss_plugin_event *harness_event_at(ss_plugin_event **evts, uint32_t i) {
	return evts[i];
}

static uint64_t harness_event_ts(const ss_plugin_event *evt) {
	return evt->ts;
}

static ss_plugin_rc harness_extract(harness_plugin *p, ss_plugin_t *s, const ss_plugin_event *evt,
                                    uint64_t evtnum, const char *evtsrc,
                                    ss_plugin_extract_field *fields, uint32_t nfields) {
	ss_plugin_event_input in;
	ss_plugin_field_extract_input ex;
	in.evt = evt;
	in.evtnum = evtnum;
	in.evtsrc = evtsrc;
	memset(&ex, 0, sizeof(ex));
	ex.num_fields = nfields;
	ex.fields = fields;
	return p->api.extract_fields(s, &in, &ex);
}

static ss_plugin_extract_field *harness_fields_new(uint32_t n) {
	return (ss_plugin_extract_field *)calloc(n, sizeof(ss_plugin_extract_field));
}

static void harness_field_set(ss_plugin_extract_field *f, uint32_t i, const char *name, uint32_t ftype) {
	f[i].field_id = i;
	f[i].field = name;
	f[i].ftype = ftype;
	f[i].arg_present = 0;
	f[i].flist = 0;
}

static uint64_t harness_res_len(ss_plugin_extract_field *f, uint32_t i) { return f[i].res_len; }
static const char *harness_res_str(ss_plugin_extract_field *f, uint32_t i) { return f[i].res.str[0]; }
static uint64_t harness_res_u64(ss_plugin_extract_field *f, uint32_t i) { return f[i].res.u64[0]; }
static ss_plugin_bool harness_res_bool(ss_plugin_extract_field *f, uint32_t i) { return f[i].res.boolean[0]; }

static const char *harness_progress(harness_plugin *p, ss_plugin_t *s, ss_instance_t *h, uint32_t *pct) {
	return p->api.get_progress(s, h, pct);
}

static void harness_close(harness_plugin *p, ss_plugin_t *s, ss_instance_t *h) {
	p->api.close(s, h);
}

static void harness_destroy(harness_plugin *p, ss_plugin_t *s) {
	p->api.destroy(s);
}
*/
import "C"

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/falcosecurity/plugin-sdk-go/pkg/loader"
	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
)

// Field type codes of the plugin API by the type name get_fields gives.
var fieldTypes = map[string]uint32{
	"string": sdk.FieldTypeCharBuf,
	"uint64": sdk.FieldTypeUint64,
	"bool":   sdk.FieldTypeBool,
}

type fieldInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type pluginInfo struct {
	Name               string          `json:"name"`
	ID                 uint32          `json:"id"`
	EventSource        string          `json:"event_source"`
	Version            string          `json:"version"`
	RequiredAPIVersion string          `json:"required_api_version"`
	Fields             []fieldInfo     `json:"fields"`
	InitSchema         json.RawMessage `json:"init_schema"`
}

type event struct {
	EvtNum uint64         `json:"evtnum"`
	TS     uint64         `json:"ts"`
	Fields map[string]any `json:"fields"`
}

func main() {
	path := flag.String("plugin", "", "path of the plugin library (libmcp_audit.so)")
	config := flag.String("config", "", "init config, JSON")
	info := flag.Bool("info", false, "print the plugin's info, fields and init schema as one JSON object")
	maxEvents := flag.Uint64("max-events", 0, "stop after this many events (0: at the end of the stream)")
	idle := flag.Duration("idle", 0, "stop once no event came for this long (for follow mode; 0: never)")
	flag.Parse()
	if *path == "" || (*info && flag.NArg() != 0) || (!*info && flag.NArg() != 1) {
		fmt.Fprintln(os.Stderr, "usage: harness -plugin LIB [-config JSON] -info\n       harness -plugin LIB [-config JSON] [-max-events N] [-idle D] FILE")
		os.Exit(2)
	}
	pi, err := loadChecked(*path, *config)
	if err != nil {
		fail(err)
	}
	out := bufio.NewWriter(os.Stdout)
	if *info {
		err = json.NewEncoder(out).Encode(pi)
	} else {
		err = drive(*path, *config, flag.Arg(0), pi.Fields, *maxEvents, *idle, out)
	}
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "harness:", err)
	os.Exit(1)
}

// loadChecked loads the plugin with the SDK's loader (which validates it and the init
// config against its schema), reads its static description and unloads it.
func loadChecked(path, config string) (*pluginInfo, error) {
	p, err := loader.NewValidPlugin(path)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	defer p.Unload()
	if p.HasCapBroken() {
		return nil, fmt.Errorf("a capability is broken: %w", p.CapBrokenError())
	}
	if !p.HasCapSourcing() || !p.HasCapExtraction() {
		return nil, errors.New("the plugin must have both the sourcing and the extraction capability")
	}
	if err := p.Init(config); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	i := p.Info()
	pi := &pluginInfo{
		Name: i.Name, ID: i.ID, EventSource: i.EventSource, Version: i.Version,
		RequiredAPIVersion: i.RequiredAPIVersion, Fields: []fieldInfo{}, InitSchema: json.RawMessage("null"),
	}
	for _, f := range p.Fields() {
		pi.Fields = append(pi.Fields, fieldInfo{f.Name, f.Type})
	}
	if s := p.InitSchema(); s != nil {
		if !json.Valid([]byte(s.Schema)) {
			return nil, errors.New("the init schema is not JSON")
		}
		pi.InitSchema = json.RawMessage(s.Schema)
	}
	return pi, nil
}

// drive runs the plugin on file through the plugin API, writing one JSON line per event.
func drive(path, config, file string, fields []fieldInfo, maxEvents uint64, idle time.Duration, out *bufio.Writer) error {
	var p C.harness_plugin
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if msg := C.harness_load(&p, cpath); msg != nil {
		return fmt.Errorf("dlopen %s: %s", path, C.GoString(msg))
	}

	cconfig := C.CString(config)
	defer C.free(unsafe.Pointer(cconfig))
	var rc C.ss_plugin_rc
	state := C.harness_init(&p, cconfig, &rc)
	if rc != C.ss_plugin_rc(sdk.SSPluginSuccess) {
		msg := "no plugin state"
		if state != nil {
			msg = C.GoString(C.harness_last_error(&p, state))
			C.harness_destroy(&p, state)
		}
		return fmt.Errorf("plugin_init: rc %d: %s", rc, msg)
	}
	defer C.harness_destroy(&p, state)
	lastErr := func(call string, rc C.ss_plugin_rc) error {
		return fmt.Errorf("%s: rc %d: %s", call, rc, C.GoString(C.harness_last_error(&p, state)))
	}

	cfile := C.CString(file)
	defer C.free(unsafe.Pointer(cfile))
	inst := C.harness_open(&p, state, cfile, &rc)
	if rc != C.ss_plugin_rc(sdk.SSPluginSuccess) {
		return lastErr("plugin_open", rc)
	}
	defer C.harness_close(&p, state, inst)

	// One extraction request per field, reused for every event.
	nfields := C.uint32_t(len(fields))
	reqs := C.harness_fields_new(nfields)
	defer C.free(unsafe.Pointer(reqs))
	for i, f := range fields {
		ftype, ok := fieldTypes[f.Type]
		if !ok {
			return fmt.Errorf("field %s has the unexpected type %q", f.Name, f.Type)
		}
		name := C.CString(f.Name)
		defer C.free(unsafe.Pointer(name))
		C.harness_field_set(reqs, C.uint32_t(i), name, C.uint32_t(ftype))
	}
	evtsrc := C.harness_event_source(&p)

	enc := json.NewEncoder(out)
	var evtnum, batches, timeouts uint64
	lastEvent := time.Now()
	for done := false; !done; {
		var n C.uint32_t
		var evts **C.ss_plugin_event
		rc := C.harness_next_batch(&p, state, inst, &n, &evts)
		batches++
		switch rc {
		case C.ss_plugin_rc(sdk.SSPluginSuccess):
		case C.ss_plugin_rc(sdk.SSPluginTimeout):
			timeouts++
		case C.ss_plugin_rc(sdk.SSPluginEOF):
			done = true
		default:
			return lastErr("plugin_next_batch", rc)
		}
		for i := C.uint32_t(0); i < n; i++ {
			evt := C.harness_event_at(evts, i)
			evtnum++
			if rc := C.harness_extract(&p, state, evt, C.uint64_t(evtnum), evtsrc, reqs, nfields); rc != C.ss_plugin_rc(sdk.SSPluginSuccess) {
				return lastErr(fmt.Sprintf("plugin_extract_fields (event %d)", evtnum), rc)
			}
			e := event{EvtNum: evtnum, TS: uint64(C.harness_event_ts(evt)), Fields: map[string]any{}}
			for j, f := range fields {
				k := C.uint32_t(j)
				if C.harness_res_len(reqs, k) == 0 {
					continue // not present
				}
				switch f.Type {
				case "string":
					e.Fields[f.Name] = C.GoString(C.harness_res_str(reqs, k))
				case "uint64":
					e.Fields[f.Name] = uint64(C.harness_res_u64(reqs, k))
				case "bool":
					e.Fields[f.Name] = C.harness_res_bool(reqs, k) != 0
				}
			}
			if err := enc.Encode(e); err != nil {
				return err
			}
			lastEvent = time.Now()
			if maxEvents > 0 && evtnum >= maxEvents {
				done = true
				break
			}
		}
		if n > 0 { // a reader following the output sees each batch as it comes
			if err := out.Flush(); err != nil {
				return err
			}
		}
		if idle > 0 && time.Since(lastEvent) >= idle {
			done = true
		}
	}
	if err := out.Flush(); err != nil {
		return err
	}
	var pct C.uint32_t
	progress := C.GoString(C.harness_progress(&p, state, inst, &pct))
	fmt.Fprintf(os.Stderr, "harness: events=%d batches=%d timeouts=%d plugin: %s\n", evtnum, batches, timeouts, progress)
	return nil
}
