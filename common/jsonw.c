/* jsonw.c - compact JSON text from jansson values (see jsonw.h). */
#include "jsonw.h"

void jsonw_value(struct buf *b, const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *k;
		json_t *x;
		int first = 1;
		buf_addc(b, '{');
		json_object_foreach((json_t *)v, k, x)
		{
			if (!first)
				buf_addc(b, ',');
			first = 0;
			buf_json_cstr(b, k);
			buf_addc(b, ':');
			jsonw_value(b, x);
		}
		buf_addc(b, '}');
		break;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *x;
		buf_addc(b, '[');
		json_array_foreach(v, i, x)
		{
			if (i)
				buf_addc(b, ',');
			jsonw_value(b, x);
		}
		buf_addc(b, ']');
		break;
	}
	case JSON_STRING: buf_json_str(b, json_string_value(v), json_string_length(v)); break;
	case JSON_INTEGER: buf_json_i64(b, json_integer_value(v)); break;
	case JSON_REAL: buf_json_double(b, json_real_value(v)); break;
	case JSON_TRUE: buf_adds(b, "true"); break;
	case JSON_FALSE: buf_adds(b, "false"); break;
	case JSON_NULL: buf_adds(b, "null"); break;
	}
}
