/*
 * Compile-only check (gcc -fsyntax-only): plugin_v3.h mirrors the SDK's plugin API 3.x
 * layouts. Needs -I <plugin-sdk-go>/pkg/sdk.
 */
#include <stddef.h>
#include "plugin_api.h"
#include "plugin_v3.h"

#define SAME_SIZE(a, b) _Static_assert(sizeof(a) == sizeof(b), "size of " #a " != " #b)
#define SAME_OFF(a, b, f) _Static_assert(offsetof(a, f) == offsetof(b, f), "offset of " #a "." #f)

_Static_assert(PLUGIN_API_VERSION_MAJOR == 3, "plugin API major version is not 3");
_Static_assert((int)FTYPE_UINT64 == (int)V3_FTYPE_UINT64 && (int)FTYPE_STRING == (int)V3_FTYPE_STRING &&
	       (int)FTYPE_RELTIME == (int)V3_FTYPE_RELTIME && (int)FTYPE_ABSTIME == (int)V3_FTYPE_ABSTIME &&
	       (int)FTYPE_BOOL == (int)V3_FTYPE_BOOL, "field type codes");
_Static_assert((int)SS_PLUGIN_SUCCESS == (int)V3_SS_PLUGIN_SUCCESS && (int)SS_PLUGIN_FAILURE == (int)V3_SS_PLUGIN_FAILURE &&
	       (int)SS_PLUGIN_TIMEOUT == (int)V3_SS_PLUGIN_TIMEOUT && (int)SS_PLUGIN_EOF == (int)V3_SS_PLUGIN_EOF &&
	       (int)SS_PLUGIN_NOT_SUPPORTED == (int)V3_SS_PLUGIN_NOT_SUPPORTED, "return codes");

SAME_SIZE(ss_plugin_event, v3_event);
SAME_OFF(ss_plugin_event, v3_event, ts);
SAME_OFF(ss_plugin_event, v3_event, tid);
SAME_OFF(ss_plugin_event, v3_event, len);
SAME_OFF(ss_plugin_event, v3_event, type);
SAME_OFF(ss_plugin_event, v3_event, nparams);

SAME_SIZE(ss_plugin_event_input, v3_event_input);
SAME_OFF(ss_plugin_event_input, v3_event_input, evt);
SAME_OFF(ss_plugin_event_input, v3_event_input, evtnum);
SAME_OFF(ss_plugin_event_input, v3_event_input, evtsrc);

SAME_SIZE(ss_plugin_byte_buffer, v3_byte_buffer);
SAME_SIZE(ss_plugin_extract_value_offsets, v3_extract_value_offsets);

SAME_SIZE(ss_plugin_extract_field, v3_extract_field);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, res);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, res_len);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, field_id);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, field);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, arg_key);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, arg_index);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, arg_present);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, ftype);
SAME_OFF(ss_plugin_extract_field, v3_extract_field, flist);

SAME_SIZE(ss_plugin_table_reader_vtable, v3_table_reader_vtable);

SAME_SIZE(ss_plugin_init_input, v3_init_input);
SAME_OFF(ss_plugin_init_input, v3_init_input, config);
SAME_OFF(ss_plugin_init_input, v3_init_input, owner);
SAME_OFF(ss_plugin_init_input, v3_init_input, get_owner_last_error);
SAME_OFF(ss_plugin_init_input, v3_init_input, tables);
SAME_OFF(ss_plugin_init_input, v3_init_input, log_fn);

SAME_SIZE(ss_plugin_field_extract_input, v3_field_extract_input);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, owner);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, get_owner_last_error);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, num_fields);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, fields);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, table_reader);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, table_reader_ext);
SAME_OFF(ss_plugin_field_extract_input, v3_field_extract_input, value_offsets);

/* Function pointer shapes: assigning the SDK's typed members to ours must not warn. */
static void check_fn_shapes(plugin_api *api)
{
	v3_get_str_fn a = api->get_required_api_version; (void)a;
	v3_destroy_fn d = api->destroy; (void)d;
	v3_get_last_error_fn e = api->get_last_error; (void)e;
	v3_get_id_fn i = api->get_id; (void)i;
	v3_open_fn o = api->open; (void)o;
	v3_close_fn c = api->close; (void)c;
	v3_get_progress_fn p = api->get_progress; (void)p;
}
void (*abi_check_keep)(plugin_api *) = check_fn_shapes;
