/*
 * Test-only bridge: a Falco plugin API 0.3.0 source plugin (what Debian 12's sysdig 0.29.3
 * and its 2022 libsinsp load) that forwards every call to a plugin API 3.x plugin, the
 * shared library named by the environment variable MCP_BRIDGE_TARGET. It lets a real
 * libsinsp filter engine evaluate conditions on the fields the 3.x plugin extracts.
 *
 * 0.3.0 side: plugin_info.h from libfalcosecurity0-dev (the headers of the very libsinsp
 * that sysdig links). 3.x side: plugin_v3.h (checked against the SDK by abi_check.c).
 * See README.md in this directory for what is translated and what is not.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_info.h"
#include "plugin_v3.h"

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------------------------ */
/* The 3.x target                                                                       */
/* ------------------------------------------------------------------------------------ */

typedef struct field_meta {
	uint32_t v3_type; /* V3_FTYPE_* as the 3.x plugin declared it (0: unknown type) */
	int is_list;      /* 0.3.0 has no list fields: never reported present */
} field_meta;

static struct {
	void *handle;
	char error[1024]; /* non-empty: the target could not be used */
	v3_get_str_fn get_required_api_version, get_name, get_description, get_contact, get_version,
		get_event_source, get_fields;
	v3_get_id_fn get_id;
	v3_init_fn init;
	v3_destroy_fn destroy;
	v3_get_last_error_fn get_last_error;
	v3_open_fn open;
	v3_close_fn close;
	v3_list_open_params_fn list_open_params;   /* optional */
	v3_get_progress_fn get_progress;           /* optional */
	v3_event_to_string_fn event_to_string;     /* optional */
	v3_next_batch_fn next_batch;
	v3_extract_fields_fn extract_fields;
	uint32_t id;
	const char *event_source;
	char *fields_json; /* the 3.x list, rewritten for 0.3.0 */
	field_meta *fields;
	size_t nfields;
} T;

static pthread_once_t T_once = PTHREAD_ONCE_INIT;

/* Marker: refuse to forward to ourselves (MCP_BRIDGE_TARGET naming the bridge). */
EXPORT const int mcp_sysdig_bridge_marker = 1;

static void target_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(T.error, sizeof(T.error), fmt, ap);
	va_end(ap);
	fprintf(stderr, "mcp_audit sysdig bridge: %s\n", T.error);
}

/* ---- a growable byte buffer ---- */
typedef struct buf {
	char *p;
	size_t len, cap;
} buf;

static int buf_reserve(buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p)
		return -1;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int buf_put(buf *b, const char *s, size_t n)
{
	if (buf_reserve(b, n))
		return -1;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

/*
 * The fields list: a JSON array of objects. A small copying scanner walks it; in each
 * element it records "type" and "isList", and rewrites the types 0.3.0 lacks:
 * bool -> string (values become "true"/"false"), reltime/abstime -> uint64 (same u64).
 * Everything else is copied byte for byte (0.3.0 ignores keys it does not know).
 */
typedef struct scan {
	const char *p;
	buf out;
	field_meta *cur;
	const char *err;
} scan;

static void skip_ws(scan *s)
{
	const char *q = s->p;
	while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
		q++;
	buf_put(&s->out, s->p, (size_t)(q - s->p));
	s->p = q;
}

/* A string token at s->p: its raw content (between the quotes, escapes kept). */
static int scan_string(scan *s, const char **start, size_t *len, int copy)
{
	const char *q = s->p;
	if (*q != '"') {
		s->err = "string expected";
		return -1;
	}
	q++;
	*start = q;
	while (*q && *q != '"') {
		if (*q == '\\' && q[1])
			q++;
		q++;
	}
	if (*q != '"') {
		s->err = "unterminated string";
		return -1;
	}
	*len = (size_t)(q - *start);
	q++;
	if (copy)
		buf_put(&s->out, s->p, (size_t)(q - s->p));
	s->p = q;
	return 0;
}

static int scan_value(scan *s, int depth);

static int is_tok(const char *p, size_t n, const char *lit)
{
	return strlen(lit) == n && memcmp(p, lit, n) == 0;
}

/* Copy the opening bracket at s->p; 1 when the container is empty (its closing
 * bracket copied too), else 0. */
static int scan_open(scan *s, char close)
{
	buf_put(&s->out, s->p, 1);
	s->p++;
	skip_ws(s);
	if (*s->p != close)
		return 0;
	buf_put(&s->out, s->p, 1);
	s->p++;
	return 1;
}

/* After a member: 1 on ',' (another follows), 0 on ``close`` (the container ended), -1
 * (s->err set) on anything else; the separator is copied. */
static int scan_next(scan *s, char close)
{
	skip_ws(s);
	if (*s->p == ',' || *s->p == close) {
		int more = *s->p == ',';
		buf_put(&s->out, s->p, 1);
		s->p++;
		return more;
	}
	s->err = close == '}' ? "',' or '}' expected" : "',' or ']' expected";
	return -1;
}

static int scan_object(scan *s, int depth)
{
	if (scan_open(s, '}'))
		return 0;
	for (;;) {
		const char *k;
		size_t kn;
		skip_ws(s);
		if (scan_string(s, &k, &kn, 1))
			return -1;
		skip_ws(s);
		if (*s->p != ':') {
			s->err = "':' expected";
			return -1;
		}
		buf_put(&s->out, ":", 1);
		s->p++;
		skip_ws(s);
		if (depth == 1 && s->cur && is_tok(k, kn, "type") && *s->p == '"') {
			const char *v;
			size_t vn;
			if (scan_string(s, &v, &vn, 0))
				return -1;
			const char *emit = NULL;
			if (is_tok(v, vn, "string"))
				s->cur->v3_type = V3_FTYPE_STRING;
			else if (is_tok(v, vn, "uint64"))
				s->cur->v3_type = V3_FTYPE_UINT64;
			else if (is_tok(v, vn, "bool"))
				s->cur->v3_type = V3_FTYPE_BOOL, emit = "\"string\"";
			else if (is_tok(v, vn, "reltime"))
				s->cur->v3_type = V3_FTYPE_RELTIME, emit = "\"uint64\"";
			else if (is_tok(v, vn, "abstime"))
				s->cur->v3_type = V3_FTYPE_ABSTIME, emit = "\"uint64\"";
			/* other types are copied as they are: sysdig names them in its error */
			if (emit)
				buf_put(&s->out, emit, strlen(emit));
			else
				buf_put(&s->out, v - 1, vn + 2);
		} else {
			if (depth == 1 && s->cur && is_tok(k, kn, "isList") && strncmp(s->p, "true", 4) == 0)
				s->cur->is_list = 1;
			if (scan_value(s, depth + 1))
				return -1;
		}
		int more = scan_next(s, '}');
		if (more <= 0)
			return more;
	}
}

static int scan_array(scan *s, int depth)
{
	if (scan_open(s, ']'))
		return 0;
	for (;;) {
		skip_ws(s);
		if (depth == 0) {
			field_meta *f = realloc(T.fields, (T.nfields + 1) * sizeof(*f));
			if (!f) {
				s->err = "out of memory";
				return -1;
			}
			T.fields = f;
			s->cur = &T.fields[T.nfields++];
			s->cur->v3_type = 0;
			s->cur->is_list = 0;
		}
		if (scan_value(s, depth + 1))
			return -1;
		int more = scan_next(s, ']');
		if (more <= 0)
			return more;
	}
}

static int scan_value(scan *s, int depth)
{
	skip_ws(s);
	if (depth > 64) {
		s->err = "nested too deep";
		return -1;
	}
	if (*s->p == '{')
		return scan_object(s, depth);
	if (*s->p == '[')
		return scan_array(s, depth);
	if (*s->p == '"') {
		const char *v;
		size_t vn;
		return scan_string(s, &v, &vn, 1);
	}
	/* number or literal */
	const char *q = s->p;
	while (*q && !strchr(",]} \t\r\n", *q))
		q++;
	if (q == s->p) {
		s->err = "value expected";
		return -1;
	}
	buf_put(&s->out, s->p, (size_t)(q - s->p));
	s->p = q;
	return 0;
}

static void target_load(void)
{
	const char *path = getenv("MCP_BRIDGE_TARGET");
	if (!path || !*path) {
		target_fail("MCP_BRIDGE_TARGET is not set (path of the plugin API 3.x library to forward to)");
		return;
	}
	/* As Falco's own loaders do: the Go runtime of the target keeps its own symbols. */
	T.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
	if (!T.handle) {
		target_fail("cannot load %s: %s", path, dlerror());
		return;
	}
	if (dlsym(T.handle, "mcp_sysdig_bridge_marker")) {
		target_fail("MCP_BRIDGE_TARGET (%s) is the bridge itself, not the 3.x plugin", path);
		return;
	}
#define REQ(member, sym)                                                          \
	do {                                                                      \
		*(void **)&T.member = dlsym(T.handle, sym);                       \
		if (!T.member) {                                                  \
			target_fail("%s: missing required symbol %s", path, sym); \
			return;                                                   \
		}                                                                 \
	} while (0)
#define OPT(member, sym) (*(void **)&T.member = dlsym(T.handle, sym))
	REQ(get_required_api_version, "plugin_get_required_api_version");
	const char *v = T.get_required_api_version();
	if (!v || strncmp(v, "3.", 2) != 0) {
		target_fail("%s requires plugin API %s; this bridge forwards to 3.x only", path, v ? v : "(null)");
		return;
	}
	REQ(init, "plugin_init");
	REQ(destroy, "plugin_destroy");
	REQ(get_last_error, "plugin_get_last_error");
	REQ(get_name, "plugin_get_name");
	REQ(get_description, "plugin_get_description");
	REQ(get_contact, "plugin_get_contact");
	REQ(get_version, "plugin_get_version");
	REQ(get_id, "plugin_get_id");
	REQ(get_event_source, "plugin_get_event_source");
	REQ(open, "plugin_open");
	REQ(close, "plugin_close");
	REQ(next_batch, "plugin_next_batch");
	REQ(get_fields, "plugin_get_fields");
	REQ(extract_fields, "plugin_extract_fields");
	OPT(list_open_params, "plugin_list_open_params");
	OPT(get_progress, "plugin_get_progress");
	OPT(event_to_string, "plugin_event_to_string");
#undef REQ
#undef OPT
	T.id = T.get_id();
	T.event_source = T.get_event_source();
	const char *fields = T.get_fields();
	if (!fields) {
		target_fail("%s: get_fields returned NULL", path);
		return;
	}
	scan s = {.p = fields};
	skip_ws(&s);
	if (*s.p != '[') {
		target_fail("%s: get_fields did not return a JSON array", path);
		return;
	}
	if (scan_value(&s, 0) == 0) {
		skip_ws(&s);
		if (*s.p)
			s.err = "trailing data";
	}
	if (s.err || !s.out.p) {
		target_fail("%s: cannot read its fields JSON (%s)", path, s.err ? s.err : "out of memory");
		return;
	}
	T.fields_json = s.out.p;
}

static int target_ok(void)
{
	pthread_once(&T_once, target_load);
	return T.error[0] == 0;
}

/* ------------------------------------------------------------------------------------ */
/* Bridge state                                                                         */
/* ------------------------------------------------------------------------------------ */

typedef struct bstate {
	void *t;             /* the 3.x plugin's state */
	char error[1024];    /* bridge-level error; empty: ask the target */
	uint8_t *evt;        /* scratch scap plugin event for extract / event_to_string */
	size_t evt_cap;
	v3_extract_field *xf;
	size_t xf_cap;
	char *str;           /* event_to_string fallback */
} bstate;

typedef struct binstance {
	void *t;             /* the 3.x instance; NULL: its open failed, see open_error */
	char *open_error;
	ss_plugin_event *evts;
	size_t cap;
	int eof_pending;
} binstance;

static const char *owner_last_error(void *owner)
{
	(void)owner;
	return "";
}

static void owner_log(void *owner, const char *component, const char *msg, int sev)
{
	(void)owner;
	/* 1..4: fatal, critical, error, warning; the rest only on request */
	if (sev <= 4 || getenv("MCP_BRIDGE_DEBUG"))
		fprintf(stderr, "mcp_audit[%s] %s\n", component ? component : "plugin", msg ? msg : "");
}

static int g_owner; /* a non-NULL owner pointer: the bridge has nothing to offer behind it */

static void set_error(bstate *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b->error, sizeof(b->error), fmt, ap);
	va_end(ap);
}

/* Wrap a payload into a scap PPME_PLUGINEVENT_E event, as the 3.x API hands events over. */
static const v3_event *wrap_event(bstate *b, const uint8_t *data, uint32_t datalen, uint64_t ts)
{
	size_t total = sizeof(v3_event) + 4 + 4 + 4 + (size_t)datalen;
	if (total > UINT32_MAX)
		return NULL;
	if (total > b->evt_cap) {
		uint8_t *p = realloc(b->evt, total);
		if (!p)
			return NULL;
		b->evt = p;
		b->evt_cap = total;
	}
	v3_event h = {.ts = ts, .tid = UINT64_MAX, .len = (uint32_t)total, .type = V3_PLUGIN_EVENT_CODE, .nparams = 2};
	uint32_t lens[2] = {4, datalen};
	memcpy(b->evt, &h, sizeof(h));
	memcpy(b->evt + sizeof(h), lens, sizeof(lens));
	memcpy(b->evt + sizeof(h) + sizeof(lens), &T.id, 4);
	if (datalen)
		memcpy(b->evt + sizeof(h) + sizeof(lens) + 4, data, datalen);
	return (const v3_event *)b->evt;
}

/* Unwrap a 3.x scap plugin event into its payload. 0 on success. */
static int unwrap_event(const v3_event *e, const uint8_t **data, uint32_t *datalen)
{
	v3_event h;
	memcpy(&h, e, sizeof(h));
	if (h.type != V3_PLUGIN_EVENT_CODE || h.nparams != 2)
		return -1;
	const uint8_t *base = (const uint8_t *)e;
	uint32_t lens[2];
	memcpy(lens, base + sizeof(h), sizeof(lens));
	size_t off = sizeof(h) + sizeof(lens) + lens[0];
	if (off + lens[1] > h.len)
		return -1;
	*data = base + off;
	*datalen = lens[1];
	return 0;
}

/* ------------------------------------------------------------------------------------ */
/* The plugin API 0.3.0 exports                                                         */
/* ------------------------------------------------------------------------------------ */

EXPORT const char *plugin_get_required_api_version(void)
{
	return PLUGIN_API_VERSION_STR;
}

EXPORT uint32_t plugin_get_type(void)
{
	return TYPE_SOURCE_PLUGIN;
}

EXPORT uint32_t plugin_get_id(void)
{
	return target_ok() ? T.id : 0;
}

/* Before init, a broken target still needs a name for sysdig to print the init error. */
EXPORT const char *plugin_get_name(void)
{
	return target_ok() ? T.get_name() : "mcp_audit";
}

EXPORT const char *plugin_get_description(void)
{
	return target_ok() ? T.get_description() : T.error;
}

EXPORT const char *plugin_get_contact(void)
{
	return target_ok() ? T.get_contact() : "";
}

EXPORT const char *plugin_get_version(void)
{
	return target_ok() ? T.get_version() : "0.0.0";
}

EXPORT const char *plugin_get_event_source(void)
{
	return target_ok() ? T.event_source : "mcp_audit";
}

EXPORT const char *plugin_get_fields(void)
{
	return target_ok() ? T.fields_json : "[]";
}

/*
 * libsinsp 2022 reads the reason of a failed init with get_last_error(state) and refuses
 * a NULL state ("Plugin handle or get_last_error function not defined"): a failed init
 * returns a state that only holds the reason (as 3.x plugins do), destroyed by destroy().
 */
static bstate g_failed_init; /* when even calloc fails */

static ss_plugin_t *init_failed(bstate *b, ss_plugin_rc *rc, const char *reason)
{
	if (!b) {
		b = &g_failed_init;
	}
	b->t = NULL;
	set_error(b, "%s", reason);
	*rc = SS_PLUGIN_FAILURE;
	return b;
}

EXPORT ss_plugin_t *plugin_init(const char *config, ss_plugin_rc *rc)
{
	bstate *b = calloc(1, sizeof(*b));
	if (!b)
		return init_failed(NULL, rc, "out of memory");
	if (!target_ok())
		return init_failed(b, rc, T.error);
	v3_init_input in = {
		.config = config ? config : "",
		.owner = &g_owner,
		.get_owner_last_error = owner_last_error,
		.tables = NULL, /* no state tables in 0.3.0 */
		.log_fn = owner_log,
	};
	int32_t trc = V3_SS_PLUGIN_FAILURE;
	void *t = T.init(&in, &trc);
	if (trc != V3_SS_PLUGIN_SUCCESS) {
		/* 3.x: a failed init still returns a state that holds the error */
		const char *e = t ? T.get_last_error(t) : NULL;
		init_failed(b, rc, e && *e ? e : "init of the 3.x plugin failed");
		if (t)
			T.destroy(t);
		return b;
	}
	b->t = t;
	*rc = SS_PLUGIN_SUCCESS;
	return b;
}

EXPORT void plugin_destroy(ss_plugin_t *s)
{
	bstate *b = s;
	if (!b || b == &g_failed_init)
		return;
	if (b->t)
		T.destroy(b->t);
	free(b->evt);
	free(b->xf);
	free(b->str);
	free(b);
}

EXPORT const char *plugin_get_last_error(ss_plugin_t *s)
{
	bstate *b = s;
	if (!b)
		return T.error;
	if (b->error[0] || !b->t)
		return b->error;
	return T.get_last_error(b->t);
}

/*
 * sysdig 0.29.3 crashes (SIGSEGV in scap_next) after an open that fails. So a failed 3.x
 * open gives an instance that holds the reason, and the first next_batch fails with it.
 */
EXPORT ss_instance_t *plugin_open(ss_plugin_t *s, const char *params, ss_plugin_rc *rc)
{
	bstate *b = s;
	b->error[0] = 0;
	binstance *i = calloc(1, sizeof(*i));
	if (!i) {
		set_error(b, "out of memory");
		*rc = SS_PLUGIN_FAILURE;
		return NULL;
	}
	int32_t trc = V3_SS_PLUGIN_FAILURE;
	void *t = T.open(b->t, params ? params : "", &trc);
	if (trc != V3_SS_PLUGIN_SUCCESS) {
		const char *e = T.get_last_error(b->t);
		size_t n = strlen(e ? e : "") + 64;
		i->open_error = malloc(n);
		if (i->open_error)
			snprintf(i->open_error, n, "cannot open '%s': %s", params ? params : "",
				 e && *e ? e : "open failed");
		if (t)
			T.close(b->t, t);
		*rc = SS_PLUGIN_SUCCESS;
		return i;
	}
	i->t = t;
	*rc = SS_PLUGIN_SUCCESS;
	return i;
}

EXPORT void plugin_close(ss_plugin_t *s, ss_instance_t *h)
{
	bstate *b = s;
	binstance *i = h;
	if (!i)
		return;
	if (b && i->t)
		T.close(b->t, i->t);
	free(i->open_error);
	free(i->evts);
	free(i);
}

EXPORT const char *plugin_list_open_params(ss_plugin_t *s, ss_plugin_rc *rc)
{
	bstate *b = s;
	if (!T.list_open_params || !b) {
		*rc = SS_PLUGIN_SUCCESS;
		return "[]";
	}
	int32_t trc = V3_SS_PLUGIN_FAILURE;
	const char *r = T.list_open_params(b->t, &trc);
	*rc = (ss_plugin_rc)trc;
	return r;
}

EXPORT const char *plugin_get_progress(ss_plugin_t *s, ss_instance_t *h, uint32_t *progress_pct)
{
	bstate *b = s;
	binstance *i = h;
	if (!T.get_progress || !b || !i || !i->t) {
		*progress_pct = 0;
		return NULL;
	}
	return T.get_progress(b->t, i->t, progress_pct);
}

EXPORT const char *plugin_event_to_string(ss_plugin_t *s, const uint8_t *data, uint32_t datalen)
{
	bstate *b = s;
	if (T.event_to_string) {
		const v3_event *e = wrap_event(b, data, datalen, UINT64_MAX);
		if (e) {
			v3_event_input in = {.evt = e, .evtnum = 0, .evtsrc = T.event_source};
			const char *r = T.event_to_string(b->t, &in);
			if (r)
				return r;
		}
	}
	/* no event_to_string in the 3.x plugin: the payload itself */
	char *p = realloc(b->str, (size_t)datalen + 1);
	if (!p)
		return "";
	b->str = p;
	memcpy(p, data, datalen);
	p[datalen] = 0;
	return p;
}

EXPORT ss_plugin_rc plugin_next_batch(ss_plugin_t *s, ss_instance_t *h, uint32_t *nevts, ss_plugin_event **evts)
{
	bstate *b = s;
	binstance *i = h;
	b->error[0] = 0;
	*nevts = 0;
	*evts = i->evts;
	if (!i->t) {
		set_error(b, "%s", i->open_error ? i->open_error : "open failed");
		return SS_PLUGIN_FAILURE;
	}
	if (i->eof_pending)
		return SS_PLUGIN_EOF;

	uint32_t n = 0;
	v3_event **tev = NULL;
	int32_t trc = T.next_batch(b->t, i->t, &n, &tev);
	if (trc != V3_SS_PLUGIN_SUCCESS && trc != V3_SS_PLUGIN_EOF)
		return (ss_plugin_rc)trc; /* timeout, or a failure the target explains */
	if (n > i->cap) {
		ss_plugin_event *p = realloc(i->evts, n * sizeof(*p));
		if (!p) {
			set_error(b, "out of memory");
			return SS_PLUGIN_FAILURE;
		}
		i->evts = p;
		i->cap = n;
	}
	uint32_t out = 0;
	for (uint32_t k = 0; k < n; k++) {
		const uint8_t *data;
		uint32_t datalen;
		if (unwrap_event(tev[k], &data, &datalen)) {
			set_error(b, "3.x plugin produced an event that is not a plugin event (type %u)",
				  (unsigned)tev[k]->type);
			return SS_PLUGIN_FAILURE;
		}
		/* the payload stays in the 3.x buffers, valid until its next next_batch */
		i->evts[out].evtnum = 0; /* assigned by the framework */
		i->evts[out].data = data;
		i->evts[out].datalen = datalen;
		i->evts[out].ts = tev[k]->ts;
		out++;
	}
	*nevts = out;
	*evts = i->evts;
	if (trc == V3_SS_PLUGIN_EOF && out > 0) {
		/* deliver these first, the end on the next call */
		i->eof_pending = 1;
		return SS_PLUGIN_SUCCESS;
	}
	return (ss_plugin_rc)trc;
}

EXPORT ss_plugin_rc plugin_extract_fields(ss_plugin_t *s, const ss_plugin_event *evt, uint32_t num_fields,
					  ss_plugin_extract_field *fields)
{
	bstate *b = s;
	b->error[0] = 0;
	const v3_event *e = wrap_event(b, evt->data, evt->datalen, evt->ts);
	if (!e) {
		set_error(b, "out of memory");
		return SS_PLUGIN_FAILURE;
	}
	if (num_fields > b->xf_cap) {
		v3_extract_field *p = realloc(b->xf, num_fields * sizeof(*p));
		if (!p) {
			set_error(b, "out of memory");
			return SS_PLUGIN_FAILURE;
		}
		b->xf = p;
		b->xf_cap = num_fields;
	}
	for (uint32_t k = 0; k < num_fields; k++) {
		ss_plugin_extract_field *f = &fields[k];
		const field_meta *m = f->field_id < T.nfields ? &T.fields[f->field_id] : NULL;
		v3_extract_field *x = &b->xf[k];
		memset(x, 0, sizeof(*x));
		x->field_id = f->field_id;
		x->field = f->field;
		x->arg_key = f->arg;
		x->arg_present = f->arg != NULL;
		x->ftype = m && m->v3_type ? m->v3_type : f->ftype;
		x->flist = m ? (v3_bool)m->is_list : 0;
		f->field_present = false;
		f->res_str = NULL;
		f->res_u64 = 0;
	}
	v3_event_input ein = {.evt = e, .evtnum = evt->evtnum, .evtsrc = T.event_source};
	v3_field_extract_input in = {
		.owner = &g_owner,
		.get_owner_last_error = owner_last_error,
		.num_fields = num_fields,
		.fields = b->xf,
	};
	int32_t trc = T.extract_fields(b->t, &ein, &in);
	if (trc != V3_SS_PLUGIN_SUCCESS)
		return (ss_plugin_rc)trc;
	for (uint32_t k = 0; k < num_fields; k++) {
		ss_plugin_extract_field *f = &fields[k];
		const v3_extract_field *x = &b->xf[k];
		if (x->res_len == 0 || x->flist)
			continue; /* absent (or a list, which 0.3.0 cannot carry) */
		switch (x->ftype) {
		case V3_FTYPE_STRING:
			f->res_str = x->res.str[0];
			f->field_present = true;
			break;
		case V3_FTYPE_UINT64:
		case V3_FTYPE_RELTIME:
		case V3_FTYPE_ABSTIME:
			f->res_u64 = x->res.u64[0];
			f->field_present = true;
			break;
		case V3_FTYPE_BOOL:
			f->res_str = x->res.boolean[0] ? "true" : "false";
			f->field_present = true;
			break;
		default:
			break;
		}
	}
	return SS_PLUGIN_SUCCESS;
}
