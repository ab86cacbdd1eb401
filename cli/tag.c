/* tag.c - zero-shot tagging (see tag.h). */
#include "tag.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "progress.h"
#include "vlm_error.h"
#include "vlm_file.h"

int vlm_cli_tag_read_labels(const char *path, vlm_cli_tag_options *o) {
  uint8_t *data = NULL;
  size_t len = 0;
  int rc = vlm_read_file(path, (size_t)64 << 20, &data, &len);
  if (rc)
    return rc;
  char *save = NULL;
  for (char *line = strtok_r((char *)data, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    while (isspace((unsigned char)*line))
      line++;
    size_t n = strlen(line);
    while (n && isspace((unsigned char)line[n - 1]))
      line[--n] = '\0';
    if (!n || line[0] == '#')
      continue;
    if (n > 1000) {
      rc = vlm_seterr(VLM_EINVAL, "%s: a label of %zu bytes (at most 1000)",
                      path, n);
      break;
    }
    for (int i = 0; i < o->nlabels; i++)
      if (!strcmp(o->labels[i], line)) {
        rc = vlm_seterr(VLM_EINVAL, "%s: label '%s' twice", path, line);
        break;
      }
    if (rc)
      break;
    if (o->nlabels == VLM_CLI_TAG_MAX_LABELS) {
      rc = vlm_seterr(VLM_EINVAL, "%s: more than %d labels", path,
                      VLM_CLI_TAG_MAX_LABELS);
      break;
    }
    char **l = realloc(o->labels, sizeof *l * (size_t)(o->nlabels + 1));
    char *copy = strdup(line);
    if (!l || !copy) {
      free(copy);
      if (l)
        o->labels = l;
      rc = vlm_seterr(VLM_ENOMEM, "labels");
      break;
    }
    o->labels = l;
    o->labels[o->nlabels++] = copy;
  }
  free(data);
  if (!rc && !o->nlabels)
    rc = vlm_seterr(VLM_EINVAL, "%s: no labels", path);
  return rc;
}

void vlm_cli_tag_options_free(vlm_cli_tag_options *o) {
  for (int i = 0; i < o->nlabels; i++)
    free(o->labels[i]);
  free(o->labels);
  o->labels = NULL;
  o->nlabels = 0;
}

/* template with each "{}" replaced by label */
static char *fill_template(const char *t, const char *label) {
  size_t n = 1, ll = strlen(label);
  for (const char *p = t; *p; p++)
    n += (p[0] == '{' && p[1] == '}') ? (p++, ll) : 1;
  char *s = malloc(n), *q = s;
  if (!s)
    return NULL;
  for (const char *p = t; *p; p++) {
    if (p[0] == '{' && p[1] == '}') {
      memcpy(q, label, ll);
      q += ll;
      p++;
    } else {
      *q++ = *p;
    }
  }
  *q = '\0';
  return s;
}

int vlm_cli_tag_label_vectors(const vlm_clip *clip,
                              const vlm_cli_tag_options *o, float **out) {
  static const char *const dflt[] = {"a photo of a {}."};
  const char *const *tpl = o->ntemplates ? o->templates : dflt;
  int nt = o->ntemplates ? o->ntemplates : 1, dim = vlm_clip_dim(clip), rc = 0;
  for (int t = 0; t < nt; t++)
    if (!strstr(tpl[t], "{}"))
      return vlm_seterr(VLM_EINVAL, "template '%s' has no {}", tpl[t]);
  float *lv = calloc((size_t)o->nlabels * dim, sizeof(float));
  float *tv = malloc(sizeof(float) * (size_t)nt * dim);
  char **texts = calloc((size_t)nt, sizeof *texts);
  if (!lv || !tv || !texts) {
    rc = vlm_seterr(VLM_ENOMEM, "label vectors");
    goto done;
  }
  for (int l = 0; l < o->nlabels && !rc; l++) {
    for (int t = 0; t < nt; t++) {
      free(texts[t]);
      if (!(texts[t] = fill_template(tpl[t], o->labels[l])))
        rc = vlm_seterr(VLM_ENOMEM, "prompt");
    }
    if (rc || (rc = vlm_clip_encode_texts(clip, (const char *const *)texts,
                                          nt, 0, tv)))
      break;
    float *v = lv + (size_t)l * dim;
    double norm = 0;
    for (int d = 0; d < dim; d++) {
      double s = 0;
      for (int t = 0; t < nt; t++)
        s += tv[(size_t)t * dim + d];
      v[d] = (float)(s / nt);
      norm += (double)v[d] * v[d];
    }
    norm = sqrt(norm);
    for (int d = 0; d < dim; d++)
      v[d] = norm > 0 ? (float)(v[d] / norm) : 0.0f;
  }
done:
  for (int t = 0; texts && t < nt; t++)
    free(texts[t]);
  free(texts);
  free(tv);
  if (rc)
    free(lv);
  else
    *out = lv;
  return rc;
}

static int field_type(const vlm_db_info *info, const char *name) {
  for (int i = 0; i < info->nfields; i++)
    if (!strcmp(info->field_names[i], name))
      return (int)info->field_types[i];
  return -1;
}

typedef struct {
  vlm_write_op *ops;
  char **metas;
  int n;
} pending;

static int flush(vlm_db *db, pending *p) {
  int rc = p->n ? vlm_db_write(db, p->ops, p->n, NULL) : 0;
  for (int i = 0; i < p->n; i++) {
    free(p->metas[i]);
    free((char *)p->ops[i].item.key);
  }
  p->n = 0;
  return rc;
}

int vlm_cli_tag_run(vlm_db *db, const vlm_clip *clip,
                    const vlm_cli_tag_options *o, vlm_cli_tag_result *res) {
  memset(res, 0, sizeof *res);
  vlm_db_info info;
  int rc = vlm_db_stat(db, &info);
  if (rc)
    return rc;
  if (field_type(&info, o->field) != VLM_FIELD_TEXT)
    return vlm_seterr(VLM_EINVAL,
                      "'%s' is not a declared text field of the database "
                      "(declare it at init: --field %s:text)",
                      o->field, o->field);
  if (o->score_field && field_type(&info, o->score_field) != VLM_FIELD_REAL)
    return vlm_seterr(VLM_EINVAL,
                      "'%s' is not a declared real field of the database "
                      "(declare it at init: --field %s:real)",
                      o->score_field, o->score_field);
  if (o->score_field && !strcmp(o->score_field, o->field))
    return vlm_seterr(VLM_EINVAL, "--score-field is the --field");
  int dim = info.dim, nl = o->nlabels, batch = o->batch > 0 ? o->batch : 256;
  float *lv = NULL, *cos = malloc(sizeof(float) * (size_t)nl),
        *prob = malloc(sizeof(float) * (size_t)nl);
  pending p = {calloc((size_t)batch, sizeof(vlm_write_op)),
               calloc((size_t)batch, sizeof(char *)), 0};
  if (!cos || !prob || !p.ops || !p.metas) {
    rc = vlm_seterr(VLM_ENOMEM, "tag");
    goto done;
  }
  if ((rc = vlm_cli_tag_label_vectors(clip, o, &lv)))
    goto done;
  vlm_progress prog;
  vlm_progress_init(&prog, stderr, "tag", (long)info.items);
  prog.quiet |= o->quiet;
  /* The keys first: an update gives the item a new id, so a walk that
   * wrote as it went would meet it again. */
  char **keys = NULL;
  long nkeys = 0, cap = 0;
  uint64_t cursor = 0;
  do {
    char **part = NULL;
    int np = 0;
    uint64_t next = 0;
    if ((rc = vlm_db_scan(db, cursor, 4096, &part, &np, &next)))
      break;
    if (nkeys + np > cap) {
      long ncap = (nkeys + np) * 2;
      char **k2 = realloc(keys, sizeof *k2 * (size_t)ncap);
      if (!k2) {
        vlm_db_keys_free(part, np);
        rc = vlm_seterr(VLM_ENOMEM, "keys");
        break;
      }
      keys = k2;
      cap = ncap;
    }
    for (int i = 0; i < np; i++) {
      keys[nkeys++] = part[i];
      part[i] = NULL;
    }
    vlm_db_keys_free(part, np);
    cursor = next;
  } while (cursor);
  prog.total = nkeys;
  long seen = 0;
  for (long k0 = 0; k0 < nkeys && !rc; k0 += batch) {
    long k1 = k0 + batch < nkeys ? k0 + batch : nkeys;
    for (long k = k0; k < k1 && !rc; k++) {
      vlm_record *rec = NULL;
      rc = vlm_db_get(db, keys[k], &rec);
      if (rc == VLM_ENOTFOUND) { /* deleted meanwhile */
        rc = 0;
        continue;
      }
      if (rc)
        break;
      seen++;
      json_error_t jerr;
      json_t *meta = json_loads(rec->meta_json ? rec->meta_json : "{}", 0,
                                &jerr);
      if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
      }
      json_t *have = json_object_get(meta, o->field);
      int tagged = have && !json_is_null(have);
      if (!rec->image_vec) {
        res->no_vector++;
      } else if (tagged && !o->retag) {
        res->already++;
      } else {
        for (int l = 0; l < nl; l++) {
          double s = 0;
          for (int d = 0; d < dim; d++)
            s += (double)rec->image_vec[d] * lv[(size_t)l * dim + d];
          cos[l] = (float)s;
        }
        int best = 0;
        for (int l = 1; l < nl; l++)
          if (cos[l] > cos[best])
            best = l;
        if ((rc = vlm_clip_probabilities(clip, cos, nl, prob))) {
          json_decref(meta);
          vlm_record_free(rec);
          break;
        }
        int write = 1;
        if (prob[best] < o->min_score) {
          res->uncertain++;
          /* a rerun with --retag leaves no stale label */
          write = tagged || (o->score_field &&
                             json_object_get(meta, o->score_field));
          json_object_del(meta, o->field);
          if (o->score_field)
            json_object_del(meta, o->score_field);
        } else {
          res->tagged++;
          json_object_set_new(meta, o->field, json_string(o->labels[best]));
          if (o->score_field)
            json_object_set_new(meta, o->score_field,
                                json_real(round(prob[best] * 1e6) / 1e6));
        }
        if (write) {
          char *s = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(6));
          char *key = strdup(rec->key);
          if (!s || !key) {
            free(s);
            free(key);
            rc = vlm_seterr(VLM_ENOMEM, "metadata");
          } else {
            p.metas[p.n] = s;
            p.ops[p.n] = (vlm_write_op){
                .kind = VLM_WRITE_UPDATE,
                .item = {.key = key, .meta_json = s}};
            if (++p.n == batch)
              rc = flush(db, &p);
          }
        }
      }
      json_decref(meta);
      vlm_record_free(rec);
    }
    if (!rc)
      rc = flush(db, &p);
    vlm_progress_update(&prog, seen);
  }
  for (long k = 0; k < nkeys; k++)
    free(keys[k]);
  free(keys);
  if (!rc)
    rc = flush(db, &p);
  vlm_progress_finish(&prog);
  res->seconds = vlm_progress_elapsed(&prog);
done:
  for (int i = 0; i < p.n; i++) {
    free(p.metas[i]);
    free((char *)p.ops[i].item.key);
  }
  free(p.ops);
  free(p.metas);
  free(lv);
  free(cos);
  free(prob);
  return rc;
}
