/* docs.c - COMMAND DOCS "arguments": Redis's argument trees, built from
 * the syntax line of each command in the table.
 *
 * redis-cli shows them in `help CMD` and as hints while typing; client
 * libraries that generate command wrappers read them.  The syntax lines
 * are written in one small grammar, the one Redis's own docs render:
 *
 *   line  := alts
 *   alts  := seq ('|' seq)*             alternatives: a "oneof"
 *   seq   := elem*
 *   elem  := '[' alts ']'               optional
 *          | '(' alts ')'               required group
 *          | WORD                       a token if upper case (TEXT, K,
 *                                       LIB-NAME), else a named argument
 *          | name '[' name '...' ']'    one or more of name
 *
 * A group of a token and one argument is that argument with the token
 * ("[K k]"); a group that starts with a token and holds more is a block
 * with that token ("[RETURN n field [field ...]]"); a lone word among
 * alternatives is a pure token ("(ANY | IMAGE | TEXT)").  Types follow the
 * argument's name (key, integer, double, pattern, else string).  The
 * lines are kept shallow enough that a COMMAND DOCS reply nests at most 7
 * levels, hiredis's limit.
 */
#include "netint.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

enum { MAXKIDS = 16, MAXDEPTH = 6 };

typedef struct darg {
  char name[40];
  char token[24];
  const char *type; /* key integer double pattern string pure-token oneof
                       block */
  int optional, multiple;
  int nkids;
  struct darg *kids;
} darg;

typedef struct {
  const char *p;
  int err;
} lexer;

static void skip_space(lexer *lx) {
  while (*lx->p == ' ')
    lx->p++;
}

/* The next word (letters, digits, '-', '.', '_', ','), or "" at a
 * punctuation mark or the end. */
static size_t word(lexer *lx, char *out, size_t cap) {
  skip_space(lx);
  size_t n = 0;
  while (isalnum((unsigned char)lx->p[n]) ||
         (lx->p[n] && strchr("-._,", lx->p[n])))
    n++;
  if (n && lx->p[n - 1] == '.') /* "name..." is not a word with dots */
    while (n && lx->p[n - 1] == '.')
      n--;
  if (n >= cap)
    lx->err = 1;
  snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), lx->p);
  lx->p += n;
  return n;
}

static int is_token(const char *w) {
  int letter = 0;
  for (const char *c = w; *c; c++) {
    if (islower((unsigned char)*c))
      return 0;
    letter |= isupper((unsigned char)*c);
  }
  return letter;
}

static const char *type_of(const char *name) {
  static const char *ints[] = {"k", "ef", "nprobe", "count", "cursor", "n",
                               "s", "numkeys", "protover"};
  if (!strcmp(name, "key"))
    return "key";
  if (!strcmp(name, "pattern"))
    return "pattern";
  if (!strcmp(name, "cosine") || !strcmp(name, "w"))
    return "double";
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
    if (!strcmp(name, ints[i]))
      return "integer";
  return "string";
}

static void free_kids(darg *a) {
  for (int i = 0; i < a->nkids; i++)
    free_kids(&a->kids[i]);
  free(a->kids);
  a->kids = NULL;
  a->nkids = 0;
}

static int parse_alts(lexer *lx, darg *out, int depth);

/* A sequence of elements into kids[], up to ']', ')', '|' or the end. */
static int parse_seq(lexer *lx, darg *kids, int *n, int depth) {
  *n = 0;
  for (;;) {
    skip_space(lx);
    char c = *lx->p;
    if (!c || c == ']' || c == ')' || c == '|')
      return 0;
    if (*n == MAXKIDS || depth > MAXDEPTH)
      return -1;
    darg *a = &kids[*n];
    memset(a, 0, sizeof *a);
    if (c == '[' || c == '(') {
      lx->p++;
      if (parse_alts(lx, a, depth + 1) < 0)
        return -1;
      skip_space(lx);
      if (*lx->p != (c == '[' ? ']' : ')'))
        return -1;
      lx->p++;
      if (c == '[') {
        /* "name [name ...]": one or more */
        if (*n > 0 && a->nkids == 0 && a->multiple &&
            !strcmp(a->name, kids[*n - 1].name) && !kids[*n - 1].token[0]) {
          kids[*n - 1].multiple = 1;
          continue;
        }
        a->optional = 1;
      }
      (*n)++;
      continue;
    }
    char w[40];
    if (!word(lx, w, sizeof w) || lx->err)
      return -1;
    skip_space(lx);
    if (!strncmp(lx->p, "...", 3)) {
      lx->p += 3;
      a->multiple = 1;
    }
    if (is_token(w)) {
      snprintf(a->token, sizeof a->token, "%s", w);
      snprintf(a->name, sizeof a->name, "%s", w);
      for (char *p = a->name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
      a->type = "pure-token";
    } else {
      snprintf(a->name, sizeof a->name, "%s", w);
      a->type = type_of(w);
    }
    (*n)++;
  }
}

/* One alternative (a sequence) as one argument. */
static int seq_to_arg(darg *kids, int n, darg *out, int among_alts) {
  if (n == 1) {
    *out = kids[0];
    if (among_alts && !strcmp(out->type, "string") && !out->token[0]) {
      /* a lone word among alternatives is a literal */
      memcpy(out->token, out->name, sizeof out->token - 1);
      out->token[sizeof out->token - 1] = '\0';
      out->type = "pure-token";
    }
    return 0;
  }
  if (n == 2 && kids[0].token[0] && !kids[0].nkids &&
      !strcmp(kids[0].type, "pure-token") && !kids[0].multiple &&
      !kids[1].token[0] && !kids[1].nkids && !kids[1].optional) {
    *out = kids[1];
    snprintf(out->token, sizeof out->token, "%s", kids[0].token);
    return 0;
  }
  memset(out, 0, sizeof *out);
  out->type = "block";
  int from = 0;
  if (kids[0].token[0] && !strcmp(kids[0].type, "pure-token") &&
      !kids[0].multiple && !kids[0].optional) {
    snprintf(out->token, sizeof out->token, "%s", kids[0].token);
    snprintf(out->name, sizeof out->name, "%s", kids[0].name);
    from = 1;
  } else {
    snprintf(out->name, sizeof out->name, "%s", kids[0].name);
  }
  out->nkids = n - from;
  if (!(out->kids = calloc((size_t)out->nkids, sizeof *out->kids)))
    return -1;
  memcpy(out->kids, kids + from, (size_t)out->nkids * sizeof *kids);
  return 0;
}

static int parse_alts(lexer *lx, darg *out, int depth) {
  darg alts[MAXKIDS];
  int nalts = 0;
  memset(out, 0, sizeof *out);
  for (;;) {
    darg kids[MAXKIDS];
    int n = 0;
    if (nalts == MAXKIDS || parse_seq(lx, kids, &n, depth) < 0 || n == 0)
      return -1;
    skip_space(lx);
    int more = *lx->p == '|';
    if (seq_to_arg(kids, n, &alts[nalts], more || nalts > 0) < 0)
      return -1;
    nalts++;
    if (!more)
      break;
    lx->p++;
  }
  if (nalts == 1) {
    *out = alts[0];
    return 0;
  }
  out->type = "oneof";
  snprintf(out->name, sizeof out->name, "%s", alts[0].name);
  out->nkids = nalts;
  if (!(out->kids = calloc((size_t)nalts, sizeof *out->kids)))
    return -1;
  memcpy(out->kids, alts, (size_t)nalts * sizeof *alts);
  return 0;
}

static void reply_arg(vlm__buf *out, const darg *a) {
  int nflags = a->optional + a->multiple;
  long n = 2 + !!a->token[0] + !!nflags + !!a->nkids +
           !strcmp(a->type, "key");
  vlm__reply_map(out, n);
  vlm__reply_cstr(out, "name");
  vlm__reply_cstr(out, a->name);
  vlm__reply_cstr(out, "type");
  vlm__reply_cstr(out, a->type);
  if (!strcmp(a->type, "key")) {
    vlm__reply_cstr(out, "key_spec_index");
    vlm__reply_int(out, 0);
  }
  if (a->token[0]) {
    vlm__reply_cstr(out, "token");
    vlm__reply_cstr(out, a->token);
  }
  if (nflags) {
    vlm__reply_cstr(out, "flags");
    vlm__reply_array(out, nflags);
    if (a->optional)
      vlm__reply_status(out, "optional");
    if (a->multiple)
      vlm__reply_status(out, "multiple");
  }
  if (a->nkids) {
    vlm__reply_cstr(out, "arguments");
    vlm__reply_array(out, a->nkids);
    for (int i = 0; i < a->nkids; i++)
      reply_arg(out, &a->kids[i]);
  }
}

int vlm__reply_doc_args(vlm__buf *out, const char *syntax) {
  darg top;
  lexer lx = {syntax, 0};
  skip_space(&lx);
  if (!*lx.p) {
    vlm__reply_array(out, 0);
    return 0;
  }
  if (parse_alts(&lx, &top, 0) < 0 || (skip_space(&lx), *lx.p)) {
    vlm__reply_array(out, 0); /* a line outside the grammar: none */
    return -1;
  }
  /* a top-level sequence is the command's arguments, not one block */
  if (!strcmp(top.type, "block") && !top.token[0] && !top.optional) {
    vlm__reply_array(out, top.nkids);
    for (int i = 0; i < top.nkids; i++)
      reply_arg(out, &top.kids[i]);
  } else {
    vlm__reply_array(out, 1);
    reply_arg(out, &top);
  }
  free_kids(&top);
  return 0;
}
