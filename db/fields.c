/* fields.c - declared metadata fields: names, types, and checking an
 * item's metadata JSON against them. */
#include "db_int.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *reserved[] = {"id", "key", "rowid", "oid", "_rowid_",
                                 "rank", "captions"};

int vlm__field_name_ok(const char *name, char *why, size_t whylen) {
  size_t n = strlen(name);
  if (n == 0 || n > 63) {
    snprintf(why, whylen, "\"%s\": name must be 1..63 characters", name);
    return -1;
  }
  if (!isalpha((unsigned char)name[0]) && name[0] != '_') {
    snprintf(why, whylen, "\"%s\": name must start with a letter or _",
             name);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)name[i]) && name[i] != '_') {
      snprintf(why, whylen, "\"%s\": name may hold only letters, digits, _",
               name);
      return -1;
    }
  for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
    if (!strcasecmp(name, reserved[i])) {
      snprintf(why, whylen, "\"%s\" is a reserved name", name);
      return -1;
    }
  if (!strncasecmp(name, "sqlite_", 7) || !strncasecmp(name, "vlm_", 4) ||
      sqlite3_keyword_check(name, (int)n)) {
    snprintf(why, whylen, "\"%s\" is a reserved word", name);
    return -1;
  }
  return 0;
}

int vlm_field_parse(const char *spec, vlm_field *out) {
  static _Thread_local char names[VLM__MAX_FIELDS][VLM_DB_FIELD_NAME];
  static _Thread_local unsigned next_name;
  if (!spec || !out)
    return vlm_seterr(VLM_EINVAL, "field spec: NULL argument");
  const char *colon = strchr(spec, ':');
  if (!colon)
    return vlm_seterr(VLM_EINVAL,
                      "field \"%s\": expected NAME:TYPE (type text|int|real)",
                      spec);
  size_t n = (size_t)(colon - spec);
  if (n == 0 || n >= sizeof names[0])
    return vlm_seterr(VLM_EINVAL, "field \"%s\": bad name length", spec);
  const char *t = colon + 1;
  vlm_field_type type;
  if (!strcasecmp(t, "text") || !strcasecmp(t, "string"))
    type = VLM_FIELD_TEXT;
  else if (!strcasecmp(t, "int") || !strcasecmp(t, "integer"))
    type = VLM_FIELD_INT;
  else if (!strcasecmp(t, "real") || !strcasecmp(t, "float"))
    type = VLM_FIELD_REAL;
  else
    return vlm_seterr(VLM_EINVAL,
                      "field \"%s\": unknown type \"%s\" (text|int|real)",
                      spec, t);
  char why[160], tmp[64];
  memcpy(tmp, spec, n);
  tmp[n] = '\0';
  if (vlm__field_name_ok(tmp, why, sizeof why) != 0)
    return vlm_seterr(VLM_EINVAL, "field %s", why);
  /* A name that ends at the colon cannot be NUL-terminated inside spec
   * without writing to it, so names live in a thread-local ring: each stays
   * valid for the next VLM__MAX_FIELDS - 1 calls on this thread, enough to
   * parse every field of one database before vlm_db_create copies them. */
  char *name = names[next_name++ % VLM__MAX_FIELDS];
  memcpy(name, tmp, n + 1);
  out->name = name;
  out->type = type;
  return 0;
}

int vlm__meta_check(const vlm__manifest *m, const char *key,
                    const char *meta_json, json_t **obj) {
  *obj = NULL;
  if (!meta_json)
    return 0;
  json_error_t jerr;
  json_t *root = json_loads(meta_json, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return vlm_seterr(VLM_EFORMAT, "key \"%s\": meta_json: %s (column %d)",
                      key, jerr.text, jerr.column);
  if (!json_is_object(root)) {
    json_decref(root);
    return vlm_seterr(VLM_EFORMAT, "key \"%s\": meta_json is not an object",
                      key);
  }
  for (int i = 0; i < m->nfields; i++) {
    json_t *v = json_object_get(root, m->fname[i]);
    if (!v || json_is_null(v))
      continue;
    int ok = 1;
    switch (m->ftype[i]) {
    case VLM_FIELD_INT:
      ok = json_is_integer(v) || json_is_boolean(v) ||
           (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
            fabs(json_real_value(v)) < 9.007199254740992e15);
      break;
    case VLM_FIELD_REAL:
      ok = json_is_number(v);
      break;
    case VLM_FIELD_TEXT:
      ok = 1; /* strings as is; numbers, arrays, objects as JSON text */
      break;
    }
    if (!ok) {
      json_decref(root);
      return vlm_seterr(VLM_EINVAL,
                        "key \"%s\": field \"%s\" must be %s", key,
                        m->fname[i],
                        m->ftype[i] == VLM_FIELD_INT ? "an integer"
                                                     : "a number");
    }
  }
  *obj = root;
  return 0;
}
