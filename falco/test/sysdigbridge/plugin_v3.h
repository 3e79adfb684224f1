/*
 * The subset of the Falco plugin API 3.x (as of plugin-sdk-go v0.8.3, API 3.11.0,
 * pkg/sdk/plugin_api.h + plugin_types.h) that the sysdig bridge calls, re-declared
 * under a v3_ prefix so it can live next to the 0.3.0 header (plugin_info.h) whose
 * names it shares. Layouts must stay identical to the SDK's: abi_check.c asserts it
 * against the real header whenever the SDK is in the Go module cache.
 *
 * Test-only: see README.md in this directory.
 */
#pragma once

#include <stdint.h>

typedef uint32_t v3_bool;

enum {
	V3_FTYPE_UINT64 = 8,
	V3_FTYPE_STRING = 9,
	V3_FTYPE_RELTIME = 20,
	V3_FTYPE_ABSTIME = 21,
	V3_FTYPE_BOOL = 25,
};

enum {
	V3_SS_PLUGIN_SUCCESS = 0,
	V3_SS_PLUGIN_FAILURE = 1,
	V3_SS_PLUGIN_TIMEOUT = -1,
	V3_SS_PLUGIN_EOF = 2,
	V3_SS_PLUGIN_NOT_SUPPORTED = 3,
};

/* libscap's PPME_PLUGINEVENT_E: params (plugin id: u32, payload: bytes), u32 lengths */
#define V3_PLUGIN_EVENT_CODE 322

#pragma pack(push, 1)
typedef struct v3_event {
	uint64_t ts;
	uint64_t tid;
	uint32_t len;
	uint16_t type;
	uint32_t nparams;
} v3_event;
#pragma pack(pop)

typedef struct v3_event_input {
	const v3_event *evt;
	uint64_t evtnum;
	const char *evtsrc;
} v3_event_input;

typedef struct v3_byte_buffer {
	uint32_t len;
	const void *ptr;
} v3_byte_buffer;

typedef struct v3_extract_value_offsets {
	uint32_t *start;
	uint32_t *length;
} v3_extract_value_offsets;

typedef struct v3_extract_field {
	union {
		const char **str;
		uint64_t *u64;
		uint32_t *u32;
		v3_bool *boolean;
		v3_byte_buffer *buf;
	} res;
	uint64_t res_len;
	uint32_t field_id;
	const char *field;
	const char *arg_key;
	uint64_t arg_index;
	v3_bool arg_present;
	uint32_t ftype;
	v3_bool flist;
} v3_extract_field;

/* Only passed through as zeroes / NULL by the bridge: declared as opaque pointers. */
typedef struct v3_table_reader_vtable {
	void *get_table_name;
	void *get_table_size;
	void *get_table_entry;
	void *read_entry_field;
} v3_table_reader_vtable;

typedef void (*v3_log_fn_t)(void *owner, const char *component, const char *msg, int sev);

typedef struct v3_init_input {
	const char *config;
	void *owner;
	const char *(*get_owner_last_error)(void *owner);
	const void *tables;
	v3_log_fn_t log_fn;
} v3_init_input;

typedef struct v3_field_extract_input {
	void *owner;
	const char *(*get_owner_last_error)(void *owner);
	uint32_t num_fields;
	v3_extract_field *fields;
	v3_table_reader_vtable table_reader;
	void *table_reader_ext;
	v3_extract_value_offsets *value_offsets;
} v3_field_extract_input;

/* The 3.x exports the bridge resolves with dlsym (same names as the 0.3.0 ones). */
typedef const char *(*v3_get_str_fn)(void);
typedef uint32_t (*v3_get_id_fn)(void);
typedef void *(*v3_init_fn)(const v3_init_input *in, int32_t *rc);
typedef void (*v3_destroy_fn)(void *s);
typedef const char *(*v3_get_last_error_fn)(void *s);
typedef void *(*v3_open_fn)(void *s, const char *params, int32_t *rc);
typedef void (*v3_close_fn)(void *s, void *h);
typedef const char *(*v3_list_open_params_fn)(void *s, int32_t *rc);
typedef const char *(*v3_get_progress_fn)(void *s, void *h, uint32_t *progress_pct);
typedef const char *(*v3_event_to_string_fn)(void *s, const v3_event_input *evt);
typedef int32_t (*v3_next_batch_fn)(void *s, void *h, uint32_t *nevts, v3_event ***evts);
typedef int32_t (*v3_extract_fields_fn)(void *s, const v3_event_input *evt, const v3_field_extract_input *in);
