/* test_data.c - the catalog builders of `make data` (tools/lib/, and the
 * openclipart-catalog and fashion-mnist programs) on small synthetic
 * inputs: SVG metadata, caption cleaning, the hash split, IDX and gzip
 * input, PNG checks, both programs end to end on tiny trees, and
 * tools/check-catalog.py (the check of the script-built catalogs) on a
 * sound set and on one set per fault it must catch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "vlm_data.h"
#include "vlm_error.h"

/* ---- helpers --------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static void rm_tree(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static char *make_tmpdir(void) {
  char *dir = strdup("/tmp/vlm_test_data_XXXXXX");
  assert_non_null(dir);
  assert_non_null(mkdtemp(dir));
  return dir;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

static void mkdirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      mkdir(buf, 0755);
      *p = '/';
    }
  mkdir(buf, 0755);
}

/* 1 if s is valid UTF-8 (jansson refuses anything else). */
static int valid_utf8(const char *s) {
  json_t *j = json_string(s);
  if (!j) return 0;
  json_decref(j);
  return 1;
}

static int parse_svg(const char *svg, vlm_data_svg_meta *m) {
  return vlm_data_svg_meta_parse(svg, strlen(svg), "test.svg", m);
}

#define SVG_HEAD                                                              \
  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"                              \
  "<svg xmlns=\"http://www.w3.org/2000/svg\" "                                \
  "xmlns:dc=\"http://purl.org/dc/elements/1.1/\" "                            \
  "xmlns:cc=\"http://web.resource.org/cc/\" "                                 \
  "xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n"

/* ---- split ----------------------------------------------------------- */

static void test_fnv1a64_reference_vectors(void **state) {
  (void)state;
  /* From the FNV reference test suite (Fowler/Noll/Vo, fnv64a). */
  assert_true(vlm_data_fnv1a64("", 0) == 0xcbf29ce484222325ULL);
  assert_true(vlm_data_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cULL);
  assert_true(vlm_data_fnv1a64("foobar", 6) == 0x85944171f73967e8ULL);
}

static void test_split_is_hash_mod_10_and_about_a_tenth(void **state) {
  (void)state;
  int ntest = 0, n = 20000;
  for (int i = 0; i < n; i++) {
    char key[64];
    snprintf(key, sizeof key, "category/sub/item_%d", i);
    uint64_t h = vlm_data_fnv1a64(key, strlen(key));
    int is_test = vlm_data_is_test(key);
    if (is_test != (h % 10 == 0)) fail_msg("%s: is_test %d, hash %% 10 = %d", key, is_test, (int)(h % 10));
    ntest += is_test;
  }
  /* Binomial(20000, 0.1): sd 42; 6 sd either side. */
  if (ntest < 2000 - 255 || ntest > 2000 + 255) fail_msg("test items %d of %d", ntest, n);
  /* Fixed by the key alone. */
  assert_int_equal(vlm_data_is_test("a"), 0xaf63dc4c8601ec8cULL % 10 == 0);
}

/* ---- SVG metadata ---------------------------------------------------- */

static void test_svg_metadata_work_fields_not_agent_titles(void **state) {
  (void)state;
  const char *svg =
      SVG_HEAD
      "<title>Drawing &amp; title</title>\n"
      "<metadata><rdf:RDF><cc:Work rdf:about=\"\">\n"
      /* An agent's title before the work's: must not be taken. */
      "  <dc:publisher><cc:Agent rdf:about=\"http://www.openclipart.org/\">"
      "<dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>\n"
      "  <dc:title>\n   Two   dead\n frogs </dc:title>\n"
      "  <dc:description>Frogs &lt;green&gt; &amp; caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac"
      "</dc:description>\n"
      "  <dc:subject><rdf:Bag><rdf:li>frog</rdf:li><rdf:li> </rdf:li>"
      "<rdf:li>swamp\n land</rdf:li><rdf:li><![CDATA[a<b]]></rdf:li></rdf:Bag></dc:subject>\n"
      "  <dc:creator><cc:Agent><dc:title>Lumen Design Studio</dc:title></cc:Agent></dc:creator>\n"
      "  <dc:rights><cc:Agent><dc:title>Someone Else</dc:title></cc:Agent></dc:rights>\n"
      "  <cc:license rdf:resource=\"http://web.resource.org/cc/PublicDomain\"/>\n"
      "</cc:Work></rdf:RDF></metadata>\n"
      "<g><title>n44</title><rect width=\"1\" height=\"1\"/></g></svg>\n";
  vlm_data_svg_meta m;
  assert_int_equal(parse_svg(svg, &m), 0);
  assert_string_equal(m.title, "Two dead frogs");
  assert_string_equal(m.description, "Frogs <green> & caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac");
  assert_string_equal(m.creator, "Lumen Design Studio");
  assert_string_equal(m.license, "http://web.resource.org/cc/PublicDomain");
  assert_string_equal(m.svg_title, "Drawing & title");
  assert_int_equal(m.nkeywords, 3);
  assert_string_equal(m.keywords[0], "frog");
  assert_string_equal(m.keywords[1], "swamp land");
  assert_string_equal(m.keywords[2], "a<b");
  vlm_data_svg_meta_free(&m);
  vlm_data_svg_meta_free(NULL);
}

static void test_svg_metadata_absent_plain_subject_and_broken_files(void **state) {
  (void)state;
  vlm_data_svg_meta m;
  /* No metadata at all. */
  assert_int_equal(parse_svg(SVG_HEAD "<rect width=\"1\" height=\"1\"/></svg>", &m), 0);
  assert_null(m.title);
  assert_null(m.description);
  assert_null(m.creator);
  assert_null(m.license);
  assert_null(m.svg_title);
  assert_int_equal(m.nkeywords, 0);
  vlm_data_svg_meta_free(&m);

  /* Empty elements are absent; a subject without a Bag is split on , and ;
   * a creator without an agent is its text. */
  assert_int_equal(parse_svg(SVG_HEAD "<metadata><rdf:RDF><cc:Work>"
                                      "<dc:title>  </dc:title><dc:description/>"
                                      "<dc:subject>car, red ;; fast</dc:subject>"
                                      "<dc:creator>Jane Doe</dc:creator>"
                                      "</cc:Work></rdf:RDF></metadata></svg>",
                             &m),
                   0);
  assert_null(m.title);
  assert_null(m.description);
  assert_string_equal(m.creator, "Jane Doe");
  assert_int_equal(m.nkeywords, 3);
  assert_string_equal(m.keywords[0], "car");
  assert_string_equal(m.keywords[1], "red");
  assert_string_equal(m.keywords[2], "fast");
  vlm_data_svg_meta_free(&m);

  /* Not well-formed (unclosed elements, undeclared dc prefix): recovered. */
  assert_int_equal(parse_svg("<svg xmlns=\"http://www.w3.org/2000/svg\"><metadata>"
                             "<dc:title>Broken but readable</dc:title>"
                             "<dc:description>still here",
                             &m),
                   0);
  assert_string_equal(m.title, "Broken but readable");
  assert_string_equal(m.description, "still here");
  vlm_data_svg_meta_free(&m);

  /* Not XML: an error, and *out zeroed. */
  memset(&m, 0x5a, sizeof m);
  int rc = parse_svg("this is not xml at all", &m);
  assert_int_equal(rc, VLM_EFORMAT);
  assert_null(m.title);
  assert_int_equal(m.nkeywords, 0);
  vlm_data_svg_meta_free(&m);

  /* A file that does not exist. */
  assert_int_not_equal(vlm_data_svg_meta_read("/nonexistent/x.svg", &m), 0);
  vlm_data_svg_meta_free(&m);
}

/* ---- captions -------------------------------------------------------- */

static vlm_data_svg_meta meta_of(const char *title, const char *desc, const char *creator,
                                 const char *const *kws) {
  vlm_data_svg_meta m;
  memset(&m, 0, sizeof m);
  m.title = title ? strdup(title) : NULL;
  m.description = desc ? strdup(desc) : NULL;
  m.creator = creator ? strdup(creator) : NULL;
  int n = 0;
  while (kws && kws[n]) n++;
  m.keywords = n ? calloc((size_t)n, sizeof *m.keywords) : NULL;
  for (int i = 0; i < n; i++) m.keywords[i] = strdup(kws[i]);
  m.nkeywords = n;
  return m;
}

static void caption_is(const char *title, const char *desc, const char *creator,
                       const char *const *kws, const char *stem,
                       const vlm_data_boilerplate *bp, const char *want,
                       vlm_data_name_source want_source) {
  vlm_data_svg_meta m = meta_of(title, desc, creator, kws);
  vlm_data_caption c;
  assert_int_equal(vlm_data_caption_build(&m, stem, "shapes stars", bp, &c), 0);
  if (strcmp(c.text, want) || c.name_source != want_source)
    fail_msg("title [%s] desc [%s] stem [%s]:\n  caption [%s] (name from %d)\n  wanted  [%s] (name from %d)",
             title ? title : "", desc ? desc : "", stem, c.text, c.name_source, want,
             want_source);
  vlm_data_caption_free(&c);
  vlm_data_svg_meta_free(&m);
}

static void test_caption_title_description_keywords(void **state) {
  (void)state;
  const char *kws[] = {"frog", "Swamp_Land", "hash", "frog", "123", "dead", "", "http://x.org/a",
                       "Lumen Design Studio", NULL};
  /* Keyword "dead" is in the title, "frog" in the description: they stay
   * in the keyword list but not in the caption. */
  caption_is("2 dead frogs", "A frog in the swamp; see http://example.com/frogs or mail a@b.org",
             "Lumen Design Studio", kws, "2_dead_frogs_lumen_desig_01", NULL,
             "2 dead frogs. A frog in the swamp; see or mail. swamp land",
             VLM_DATA_NAME_TITLE);

  vlm_data_svg_meta m = meta_of("2 dead frogs", NULL, "Lumen Design Studio", kws);
  vlm_data_caption c;
  assert_int_equal(vlm_data_caption_build(&m, "x", NULL, NULL, &c), 0);
  assert_int_equal(c.nkeywords, 3);
  assert_string_equal(c.keywords[0], "frog");
  assert_string_equal(c.keywords[1], "swamp land");
  assert_string_equal(c.keywords[2], "dead");
  assert_string_equal(c.author, "Lumen Design Studio");
  assert_int_equal(c.usable, 1);
  vlm_data_caption_free(&c);
  vlm_data_svg_meta_free(&m);
}

static void test_caption_generic_titles_fall_back_to_file_name(void **state) {
  (void)state;
  /* The author's name as title: the file name, minus number and the
   * truncated author ("lumen_desig"). */
  caption_is("Lumen Design Studio", NULL, "Lumen Design Studio", NULL,
             "2_dead_frogs_lumen_desig_01", NULL, "2 dead frogs", VLM_DATA_NAME_STEM);
  caption_is("Clipart by Nicu Buculei - head1", NULL, "Nicu Buculei", NULL, "man01", NULL, "man",
             VLM_DATA_NAME_STEM);
  caption_is("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", NULL, "Danny Allen",
             NULL, "arrow-left-blue_benji_pa_01", NULL, "arrow left blue benji pa",
             VLM_DATA_NAME_STEM);
  caption_is("arrow-left", NULL, "Benji Park", NULL, "x", NULL, "arrow-left", VLM_DATA_NAME_TITLE);
  caption_is("Benji Park", NULL, "Benji Park", NULL, "arrow-left-blue_benji_pa_01", NULL,
             "arrow left blue", VLM_DATA_NAME_STEM);
  /* Identifier-style titles get spaces; double-escaped entities decode. */
  caption_is("tennis_racket", NULL, NULL, NULL, "x", NULL, "tennis racket", VLM_DATA_NAME_TITLE);
  caption_is("Croissant (B &amp;amp; W)", NULL, NULL, NULL, "x", NULL, "Croissant (B & W)",
             VLM_DATA_NAME_TITLE);
  /* Nothing at all: the fallback (category words). */
  caption_is(NULL, NULL, NULL, NULL, "01", NULL, "shapes stars", VLM_DATA_NAME_NONE);
  const char *only_hash[] = {"hash", NULL};
  caption_is("", "HASH(0x86d2470)", NULL, only_hash, "01", NULL, "shapes stars",
             VLM_DATA_NAME_NONE);
}

static void test_caption_descriptions_dropped_cut_or_leading(void **state) {
  (void)state;
  /* Repeats the title: dropped (case and punctuation ignored). */
  caption_is("Knot illustration (Clove Hitch)", "knot illustration: clove hitch!", NULL, NULL, "x",
             NULL, "Knot illustration (Clove Hitch)", VLM_DATA_NAME_TITLE);
  /* Only an e-mail address / a credit line: dropped. */
  caption_is("poison_bw", "jean.victor.balin@gmail.com", NULL, NULL, "x", NULL, "poison bw",
             VLM_DATA_NAME_TITLE);
  caption_is("Earth", "Data from: NASA Johnson Space Center: http://eol.jsc.nasa.gov", NULL,
             NULL, "x", NULL, "Earth", VLM_DATA_NAME_TITLE);
  /* Says the name already: it leads, the name is not repeated. */
  caption_is("Boy", "Face of a boy", NULL, NULL, "x", NULL, "Face of a boy", VLM_DATA_NAME_TITLE);
  /* Long: cut after the first sentence. */
  caption_is("Signal flag A",
             "From at least the time of the ancient Athenians, admirals have hoisted flags. "
             "Originally, the flags were intended to convey a single message to all the ships "
             "of the fleet, often come aboard the flagship.",
             NULL, NULL, "x", NULL,
             "Signal flag A. From at least the time of the ancient Athenians, admirals have "
             "hoisted flags.",
             VLM_DATA_NAME_TITLE);
  /* Long without a sentence end: cut at a word, within the limit. */
  char desc[600] = "";
  for (int i = 0; i < 60; i++) strcat(desc, "word\xc3\xa9 ");
  vlm_data_svg_meta m = meta_of("T", desc, NULL, NULL);
  vlm_data_caption c;
  assert_int_equal(vlm_data_caption_build(&m, "x", NULL, NULL, &c), 0);
  assert_non_null(c.description);
  assert_true(strlen(c.description) <= VLM_DATA_DESCRIPTION_MAX);
  assert_true(strlen(c.description) > VLM_DATA_DESCRIPTION_MAX - 10);
  assert_true(valid_utf8(c.description));
  assert_int_equal(c.description[strlen(c.description) - 1], (char)0xa9);
  vlm_data_caption_free(&c);
  vlm_data_svg_meta_free(&m);
}

static void test_caption_length_cap_and_utf8(void **state) {
  (void)state;
  /* A huge title, many keywords, invalid UTF-8: capped, valid, no cut
   * inside a word. */
  char title[1000] = "";
  for (int i = 0; i < 90; i++) strcat(title, "\xe6\x97\xa5\xe6\x9c\xac ");
  strcat(title, "bad\xff\xfe byte");
  const char *kws[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
                       "iota", "kappa", NULL};
  vlm_data_svg_meta m = meta_of(title, NULL, NULL, kws);
  vlm_data_caption c;
  assert_int_equal(vlm_data_caption_build(&m, "x", NULL, NULL, &c), 0);
  if (strlen(c.text) > VLM_DATA_CAPTION_MAX) fail_msg("caption of %zu bytes", strlen(c.text));
  assert_true(valid_utf8(c.text));
  assert_true(valid_utf8(c.name));
  assert_non_null(strstr(c.name, "bad?? byte"));
  vlm_data_caption_free(&c);
  vlm_data_svg_meta_free(&m);

  /* Keywords in the caption: at most VLM_DATA_CAPTION_KEYWORDS. */
  m = meta_of("Greek", NULL, NULL, kws);
  assert_int_equal(vlm_data_caption_build(&m, "x", NULL, NULL, &c), 0);
  assert_string_equal(c.text, "Greek. alpha, beta, gamma, delta, epsilon, zeta, eta, theta");
  assert_int_equal(c.nkeywords, 10);
  vlm_data_caption_free(&c);
  vlm_data_svg_meta_free(&m);
}

static void test_caption_boilerplate_by_frequency(void **state) {
  (void)state;
  vlm_data_boilerplate *bp;
  assert_int_equal(vlm_data_boilerplate_new(3, 4, &bp), 0);
  const char *titles[] = {"gramastar", "GramaStar!", "gramastar", "card", "card", "card",
                          "Lone Star", NULL};
  for (int i = 0; titles[i]; i++) {
    vlm_data_svg_meta m = meta_of(titles[i], i < 4 ? "UK roadsigns (http://a.b)" : "Unique words",
                                  NULL, NULL);
    assert_int_equal(vlm_data_boilerplate_add(bp, &m), 0);
    vlm_data_svg_meta_free(&m);
  }
  /* Counted after case folding, punctuation and URL removal. */
  assert_int_equal(vlm_data_boilerplate_titles(bp, "GRAMASTAR"), 3);
  assert_int_equal(vlm_data_boilerplate_titles(bp, "Lone Star"), 1);
  assert_int_equal(vlm_data_boilerplate_titles(bp, "never seen"), 0);
  assert_int_equal(vlm_data_boilerplate_descriptions(bp, "uk roadsigns"), 4);
  assert_int_equal(vlm_data_boilerplate_titles(bp, "uk roadsigns"), 0);
  assert_int_equal(vlm_data_boilerplate_descriptions(bp, "Unique words"), 3);

  /* A frequent title gives way to a file name with a word in it... */
  caption_is("gramastar", NULL, NULL, NULL, "star_63pt05step", bp, "star 63pt05step",
             VLM_DATA_NAME_STEM);
  /* ...but not to a file name with none. */
  caption_is("card", NULL, NULL, NULL, "s_05", bp, "card", VLM_DATA_NAME_TITLE);
  caption_is("Lone Star", NULL, NULL, NULL, "s_05", bp, "Lone Star", VLM_DATA_NAME_TITLE);
  /* A frequent description is dropped, a rarer one kept. */
  caption_is("Road", "UK roadsigns", NULL, NULL, "x", bp, "Road", VLM_DATA_NAME_TITLE);
  caption_is("Road", "Unique words", NULL, NULL, "x", bp, "Road. Unique words",
             VLM_DATA_NAME_TITLE);
  vlm_data_boilerplate_free(bp);
  vlm_data_boilerplate_free(NULL);
}

static void test_text_normalize(void **state) {
  (void)state;
  char *s;
  assert_int_equal(vlm_data_text_normalize(" \t a\n\n b\xc2\xa0 c \r", &s), 0);
  assert_string_equal(s, "a b c");
  free(s);
  /* Invalid UTF-8: lone continuation, overlong, surrogate, truncated. */
  assert_int_equal(vlm_data_text_normalize("x\x80y\xc0\xafz\xed\xa0\x80w\xe6\x97", &s), 0);
  assert_string_equal(s, "x?y??z???w??");
  free(s);
  assert_int_equal(vlm_data_text_normalize(NULL, &s), 0);
  assert_null(s);
}

/* ---- IDX and gzip ---------------------------------------------------- */

/* An idx3 file: n images of h x w, pixel (i, y, x) = i*31 + y*7 + x. */
static uint8_t *make_idx3(uint32_t n, uint32_t h, uint32_t w, size_t *len) {
  *len = 16 + (size_t)n * h * w;
  uint8_t *b = malloc(*len);
  uint32_t hdr[4] = {0x00000803, n, h, w};
  for (int k = 0; k < 4; k++)
    for (int j = 0; j < 4; j++) b[4 * k + j] = (uint8_t)(hdr[k] >> (24 - 8 * j));
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t y = 0; y < h; y++)
      for (uint32_t x = 0; x < w; x++) b[16 + (i * h + y) * w + x] = (uint8_t)(i * 31 + y * 7 + x);
  return b;
}

static void write_gz(const char *path, const uint8_t *data, size_t len) {
  gzFile gz = gzopen(path, "wb");
  assert_non_null(gz);
  assert_int_equal(gzwrite(gz, data, (unsigned)len), (int)len);
  assert_int_equal(gzclose(gz), Z_OK);
}

static void test_idx_parse(void **state) {
  (void)state;
  size_t len;
  uint8_t *b = make_idx3(3, 4, 5, &len);
  vlm_data_idx idx;
  assert_int_equal(vlm_data_idx_parse(b, len, &idx), 0);
  assert_int_equal(idx.ndim, 3);
  assert_int_equal(idx.dims[0], 3);
  assert_int_equal(idx.dims[1], 4);
  assert_int_equal(idx.dims[2], 5);
  assert_int_equal(idx.count, 60);
  assert_ptr_equal(idx.data, b + 16);
  assert_int_equal(idx.data[(2 * 4 + 3) * 5 + 4], 2 * 31 + 3 * 7 + 4);
  /* Short, long, bad magic, other element type, bad dimension count. */
  assert_int_equal(vlm_data_idx_parse(b, len - 1, &idx), VLM_ECORRUPT);
  assert_int_equal(vlm_data_idx_parse(b, 10, &idx), VLM_ECORRUPT);
  uint8_t *longer = malloc(len + 1);
  memcpy(longer, b, len);
  longer[len] = 0;
  assert_int_equal(vlm_data_idx_parse(longer, len + 1, &idx), VLM_ECORRUPT);
  free(longer);
  b[0] = 1;
  assert_int_equal(vlm_data_idx_parse(b, len, &idx), VLM_EFORMAT);
  b[0] = 0;
  b[2] = 0x0d; /* float */
  assert_int_equal(vlm_data_idx_parse(b, len, &idx), VLM_EUNSUPPORTED);
  b[2] = 0x08;
  b[3] = 0;
  assert_int_equal(vlm_data_idx_parse(b, len, &idx), VLM_EFORMAT);
  b[3] = 3;
  /* idx1 labels. */
  uint8_t labels[] = {0, 0, 8, 1, 0, 0, 0, 2, 9, 0};
  assert_int_equal(vlm_data_idx_parse(labels, sizeof labels, &idx), 0);
  assert_int_equal(idx.ndim, 1);
  assert_int_equal(idx.count, 2);
  assert_int_equal(idx.data[0], 9);
  /* A header whose sizes overflow size_t. */
  uint8_t huge[] = {0, 0, 8, 4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  assert_int_equal(vlm_data_idx_parse(huge, sizeof huge, &idx), VLM_ECORRUPT);
  free(b);
}

static void test_read_gz_plain_compressed_truncated_capped(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  char gz_path[256], plain_path[256], cut_path[256];
  snprintf(gz_path, sizeof gz_path, "%s/a.gz", dir);
  snprintf(plain_path, sizeof plain_path, "%s/a", dir);
  snprintf(cut_path, sizeof cut_path, "%s/cut.gz", dir);
  size_t len;
  uint8_t *b = make_idx3(40, 28, 28, &len);   /* > 1 MiB? no: 31 KB; grows anyway */
  write_gz(gz_path, b, len);
  write_file(plain_path, b, len);
  uint8_t *got;
  size_t got_len;
  assert_int_equal(vlm_data_read_gz(gz_path, 1 << 20, &got, &got_len), 0);
  assert_int_equal(got_len, len);
  assert_memory_equal(got, b, len);
  free(got);
  assert_int_equal(vlm_data_read_gz(plain_path, 1 << 20, &got, &got_len), 0);
  assert_int_equal(got_len, len);
  assert_memory_equal(got, b, len);
  free(got);
  /* Truncated gzip stream. */
  FILE *f = fopen(gz_path, "rb");
  uint8_t comp[65536];
  size_t clen = fread(comp, 1, sizeof comp, f);
  fclose(f);
  write_file(cut_path, comp, clen / 2);
  int rc = vlm_data_read_gz(cut_path, 1 << 20, &got, &got_len);
  if (rc != VLM_ECORRUPT) fail_msg("truncated gzip: rc %d (%s), %zu bytes", rc, vlm_errmsg(), got_len);
  assert_null(got);
  /* Over the cap. */
  assert_int_equal(vlm_data_read_gz(gz_path, len - 1, &got, &got_len), VLM_ETOOBIG);
  assert_int_not_equal(vlm_data_read_gz("/nonexistent/x.gz", 100, &got, &got_len), 0);
  free(b);
  rm_tree(dir);
  free(dir);
}

/* ---- PNG ------------------------------------------------------------- */

static void write_rgba_png(const char *path, const uint8_t *rgba, int w, int h) {
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = (png_uint_32)w;
  img.height = (png_uint_32)h;
  img.format = PNG_FORMAT_RGBA;
  assert_true(png_image_write_to_file(&img, path, 0, rgba, 0, NULL));
}

static void test_png_gray_round_trip_and_pixel_checks(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  char path[256];
  snprintf(path, sizeof path, "%s/g.png", dir);
  uint8_t gray[7 * 5];
  for (int i = 0; i < 35; i++) gray[i] = (uint8_t)(i * 7);
  assert_int_equal(vlm_data_png_write_gray(path, gray, 7, 5), 0);
  vlm_data_png_info info;
  assert_int_equal(vlm_data_png_info_read(path, &info), 0);
  assert_int_equal(info.width, 7);
  assert_int_equal(info.height, 5);
  assert_int_equal(info.bit_depth, 8);
  assert_int_equal(info.color_type, 0);
  /* Read back with libpng: the same pixels. */
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  assert_true(png_image_begin_read_from_file(&img, path));
  img.format = PNG_FORMAT_GRAY;
  uint8_t back[35];
  assert_true(png_image_finish_read(&img, NULL, back, 0, NULL));
  assert_memory_equal(back, gray, 35);
  vlm_data_png_pixels px;
  assert_int_equal(vlm_data_png_pixels_read(path, 1000, &px), 0);
  assert_int_equal(px.blank_on_white, 0);
  assert_int_equal(px.blank_no_alpha, 0);
  assert_true(px.transparent == 0);
  assert_int_equal(vlm_data_png_pixels_read(path, 34, &px), VLM_ETOOBIG);

  /* Uniform gray: blank. */
  memset(gray, 200, sizeof gray);
  assert_int_equal(vlm_data_png_write_gray(path, gray, 7, 5), 0);
  assert_int_equal(vlm_data_png_pixels_read(path, 1000, &px), 0);
  assert_int_equal(px.blank_on_white, 1);
  assert_int_equal(px.blank_no_alpha, 1);

  /* Clip art: transparent black background, a white opaque square in
   * the middle -- blank over white, visible on black, and blank when
   * alpha is ignored only if the hidden colour matches... here it does
   * not (black vs white). */
  int w = 10, h = 10;
  uint8_t rgba[10 * 10 * 4];
  memset(rgba, 0, sizeof rgba);
  for (int y = 3; y < 7; y++)
    for (int x = 3; x < 7; x++) memset(rgba + 4 * (y * w + x), 255, 4);
  char rgba_path[256];
  snprintf(rgba_path, sizeof rgba_path, "%s/c.png", dir);
  write_rgba_png(rgba_path, rgba, w, h);
  assert_int_equal(vlm_data_png_pixels_read(rgba_path, 1000, &px), 0);
  assert_int_equal(px.blank_on_white, 1);
  assert_int_equal(px.blank_no_alpha, 0);
  assert_true(px.transparent > 0.839 && px.transparent < 0.841);   /* 84 of 100 */
  assert_int_equal(px.dark_background, 1);
  /* A black shape on the same background: drawn over white it shows, with
   * alpha ignored it is all black (what VLM_ALPHA_DROP would see). */
  for (int y = 3; y < 7; y++)
    for (int x = 3; x < 7; x++) {
      uint8_t *p = rgba + 4 * (y * w + x);
      p[0] = p[1] = p[2] = 0;
      p[3] = 255;
    }
  write_rgba_png(rgba_path, rgba, w, h);
  assert_int_equal(vlm_data_png_pixels_read(rgba_path, 1000, &px), 0);
  assert_int_equal(px.blank_on_white, 0);
  assert_int_equal(px.blank_no_alpha, 1);

  /* Not a PNG. */
  write_file(path, "GIF89a....................................", 40);
  assert_int_equal(vlm_data_png_info_read(path, &info), VLM_EFORMAT);
  assert_int_not_equal(vlm_data_png_pixels_read(path, 1000, &px), 0);
  rm_tree(dir);
  free(dir);
}

/* ---- the programs, end to end ---------------------------------------- */

static const char *tool_path(const char *name, char *buf, size_t cap) {
  const char *build = getenv("BUILD");
  snprintf(buf, cap, "%s/tools/%s", build && *build ? build : "build", name);
  return buf;
}

static int run_tool(const char *cmd) {
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_t *read_jsonl(const char *path, size_t *n) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  json_t *arr = json_array();
  char line[8192];
  while (fgets(line, sizeof line, f)) {
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    if (!j) fail_msg("%s: %s: %s", path, err.text, line);
    json_array_append_new(arr, j);
  }
  fclose(f);
  *n = json_array_size(arr);
  return arr;
}

static json_t *find_key(json_t *arr, const char *key) {
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    if (!strcmp(json_string_value(json_object_get(v, "key")), key)) return v;
  }
  return NULL;
}

static void svg_file(const char *path, const char *title, const char *licence) {
  char buf[2048];
  snprintf(buf, sizeof buf,
           SVG_HEAD "<metadata><rdf:RDF><cc:Work><dc:title>%s</dc:title>"
           "<dc:subject><rdf:Bag><rdf:li>kw_one</rdf:li></rdf:Bag></dc:subject>"
           "<dc:creator><cc:Agent><dc:title>Ann Artist</dc:title></cc:Agent></dc:creator>"
           "<cc:license rdf:resource=\"%s\"/></cc:Work></rdf:RDF></metadata></svg>",
           title, licence);
  write_file(path, buf, strlen(buf));
}

static void png_file(const char *path, int w, int h, int blank) {
  uint8_t *px = calloc((size_t)w * h, 1);
  if (!blank) px[0] = 255;
  assert_int_equal(vlm_data_png_write_gray(path, px, w, h), 0);
  free(px);
}

static void test_openclipart_catalog_on_a_small_tree(void **state) {
  (void)state;
  char tool[256];
  tool_path("openclipart-catalog", tool, sizeof tool);
  if (access(tool, X_OK)) fail_msg("%s is not built (make %s)", tool, tool);
  char *dir = make_tmpdir();
  char p[512], q[512];
#define AT(buf, fmt, ...) (snprintf(buf, sizeof buf, "%s/" fmt, dir, __VA_ARGS__), buf)
  const char *cats[] = {"png/animals/mammals", "svg/animals/mammals", "png/shapes",
                        "svg/shapes", "png/science/astronomy", "svg/science/astronomy"};
  for (int i = 0; i < 6; i++) mkdirs(AT(p, "%s", cats[i]));
  const char *pd = "http://web.resource.org/cc/PublicDomain";
  /* A normal item. */
  png_file(AT(p, "%s", "png/animals/mammals/dolphin_01.png"), 20, 10, 0);
  svg_file(AT(p, "%s", "svg/animals/mammals/dolphin_01.svg"), "Dolphin", pd);
  /* The same PNG linked from another category: merged, key is the real
   * file's path. */
  assert_int_equal(symlink("../animals/mammals/dolphin_01.png", AT(p, "%s", "png/shapes/dolphin_01.png")), 0);
  svg_file(AT(p, "%s", "svg/shapes/dolphin_01.svg"), "Dolphin again", pd);
  /* No SVG. */
  png_file(AT(p, "%s", "png/shapes/orphan.png"), 20, 20, 0);
  /* GPL. */
  png_file(AT(p, "%s", "png/shapes/gpl.png"), 20, 20, 0);
  svg_file(AT(p, "%s", "svg/shapes/gpl.svg"), "GPL shape", "http://creativecommons.org/licenses/GPL/2.0/");
  /* Blank render. */
  png_file(AT(p, "%s", "png/shapes/blank.png"), 20, 20, 1);
  svg_file(AT(p, "%s", "svg/shapes/blank.svg"), "Blank", pd);
  /* Too small. */
  png_file(AT(p, "%s", "png/shapes/tiny.png"), 3, 2, 0);
  svg_file(AT(p, "%s", "svg/shapes/tiny.svg"), "Tiny", "");
  /* Empty licence is fine; a top-level file has no subcategory; the SVG is
   * a symlink. */
  png_file(AT(p, "%s", "png/science/moon.png"), 16, 16, 0);
  svg_file(AT(p, "%s", "svg/science/astronomy/moon.svg"), "Moon &amp; stars", "");
  assert_int_equal(symlink("astronomy/moon.svg", AT(p, "%s", "svg/science/moon.svg")), 0);
  /* A series of 40 whose captions differ only in digits: 25 are kept. */
  for (int i = 0; i < 40; i++) {
    char rel[64];
    snprintf(rel, sizeof rel, "png/science/astronomy/planet_%02d.png", i);
    png_file(AT(p, "%s", rel), 12, 12, 0);
    snprintf(rel, sizeof rel, "svg/science/astronomy/planet_%02d.svg", i);
    char title[32];
    snprintf(title, sizeof title, "Planet %d", i);
    svg_file(AT(p, "%s", rel), title, pd);
  }
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s --png-root %s/png --svg-root %s/svg --out %s/out 2>%s/log", tool,
           dir, dir, dir, dir);
  int rc = run_tool(cmd);
  if (rc) fail_msg("%s: exit %d", cmd, rc);

  size_t n_all, n_train, n_test;
  json_t *all = read_jsonl(AT(p, "%s", "out/catalog.jsonl"), &n_all);
  json_t *train = read_jsonl(AT(p, "%s", "out/train.jsonl"), &n_train);
  json_t *test = read_jsonl(AT(p, "%s", "out/test.jsonl"), &n_test);
  assert_int_equal(n_all, 27);   /* dolphin, moon, 25 of 40 planets */
  assert_int_equal(n_train + n_test, n_all);
  size_t i;
  json_t *v;
  json_array_foreach(all, i, v) {
    const char *key = json_string_value(json_object_get(v, "key"));
    int in_test = find_key(test, key) != NULL, in_train = find_key(train, key) != NULL;
    if (in_test + in_train != 1 || in_test != vlm_data_is_test(key))
      fail_msg("%s: in test %d, in train %d, hash says test %d", key, in_test, in_train,
               vlm_data_is_test(key));
  }
  json_t *dolphin = find_key(all, "animals/mammals/dolphin_01");
  assert_non_null(dolphin);
  assert_null(find_key(all, "shapes/dolphin_01"));
  assert_string_equal(json_string_value(json_object_get(dolphin, "text")), "Dolphin. kw one");
  json_t *meta = json_object_get(dolphin, "meta");
  assert_string_equal(json_string_value(json_object_get(meta, "category")), "animals");
  assert_string_equal(json_string_value(json_object_get(meta, "subcategory")), "mammals");
  assert_string_equal(json_string_value(json_object_get(meta, "author")), "Ann Artist");
  assert_string_equal(json_string_value(json_object_get(meta, "keywords")), "kw one");
  assert_int_equal(json_integer_value(json_object_get(meta, "width")), 20);
  assert_int_equal(json_integer_value(json_object_get(meta, "height")), 10);
  const char *image = json_string_value(json_object_get(dolphin, "image"));
  assert_true(image[0] == '/');
  assert_non_null(strstr(image, "/png/animals/mammals/dolphin_01.png"));
  assert_int_equal(access(image, R_OK), 0);
  json_t *moon = find_key(all, "science/moon");
  assert_non_null(moon);
  assert_string_equal(json_string_value(json_object_get(moon, "text")), "Moon & stars. kw one");
  assert_null(json_object_get(json_object_get(moon, "meta"), "subcategory"));
  const char *gone[] = {"shapes/orphan", "shapes/gpl", "shapes/blank", "shapes/tiny", NULL};
  for (int k = 0; gone[k]; k++)
    if (find_key(all, gone[k])) fail_msg("%s should be excluded", gone[k]);
  /* The planets kept are the 25 with the smallest key hashes. */
  uint64_t hashes[40];
  for (int k = 0; k < 40; k++) {
    char key[64];
    snprintf(key, sizeof key, "science/astronomy/planet_%02d", k);
    hashes[k] = vlm_data_fnv1a64(key, strlen(key));
  }
  for (int k = 0; k < 40; k++) {
    char key[64];
    snprintf(key, sizeof key, "science/astronomy/planet_%02d", k);
    int smaller = 0;
    for (int j = 0; j < 40; j++) smaller += hashes[j] < hashes[k];
    int kept = find_key(all, key) != NULL;
    if (kept != (smaller < 25)) fail_msg("%s: kept %d, but %d keys hash lower", key, kept, smaller);
  }

  json_error_t err;
  json_t *stats = json_load_file(AT(p, "%s", "out/stats.json"), 0, &err);
  assert_non_null(stats);
  json_t *ex = json_object_get(stats, "excluded");
  assert_int_equal(json_integer_value(json_object_get(stats, "png_paths")), 47);
  assert_int_equal(json_integer_value(json_object_get(stats, "unique_pngs")), 46);
  assert_int_equal(json_integer_value(json_object_get(ex, "no_svg")), 1);
  assert_int_equal(json_integer_value(json_object_get(ex, "licence_not_public_domain")), 1);
  assert_int_equal(json_integer_value(json_object_get(ex, "blank_image")), 1);
  assert_int_equal(json_integer_value(json_object_get(ex, "side_under_8px")), 1);
  assert_int_equal(json_integer_value(json_object_get(ex, "near_duplicate_series")), 15);
  assert_int_equal(json_integer_value(json_object_get(stats, "items")), 27);
  assert_int_equal(json_integer_value(json_object_get(stats, "test")), (json_int_t)n_test);

  /* Deterministic: a second run writes the same bytes. */
  snprintf(cmd, sizeof cmd,
           "%s --png-root %s/png --svg-root %s/svg --out %s/out2 2>/dev/null && "
           "cmp -s %s/out/catalog.jsonl %s/out2/catalog.jsonl",
           tool, dir, dir, dir, dir, dir);
  assert_int_equal(run_tool(cmd), 0);

  json_decref(all);
  json_decref(train);
  json_decref(test);
  json_decref(stats);
  (void)q;
  rm_tree(dir);
  free(dir);
#undef AT
}

static void test_fashion_mnist_on_tiny_idx_files(void **state) {
  (void)state;
  char tool[256];
  tool_path("fashion-mnist", tool, sizeof tool);
  if (access(tool, X_OK)) fail_msg("%s is not built (make %s)", tool, tool);
  char *dir = make_tmpdir();
  char p[512];
  snprintf(p, sizeof p, "%s/src", dir);
  mkdir(p, 0755);
  /* 12 training images, 3 test images of 4x3 with labels i % 10. */
  const char *prefix[2] = {"train", "t10k"};
  uint32_t counts[2] = {12, 3};
  for (int s = 0; s < 2; s++) {
    size_t len;
    uint8_t *img = make_idx3(counts[s], 3, 4, &len);
    snprintf(p, sizeof p, "%s/src/%s-images-idx3-ubyte.gz", dir, prefix[s]);
    write_gz(p, img, len);
    free(img);
    uint8_t lab[8 + 12] = {0, 0, 8, 1, 0, 0, 0, (uint8_t)counts[s]};
    for (uint32_t i = 0; i < counts[s]; i++) lab[8 + i] = (uint8_t)((i + (uint32_t)s) % 10);
    snprintf(p, sizeof p, "%s/src/%s-labels-idx1-ubyte.gz", dir, prefix[s]);
    write_gz(p, lab, 8 + counts[s]);
  }
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s --src %s/src --out %s/out 2>%s/log", tool, dir, dir, dir);
  int rc = run_tool(cmd);
  if (rc) fail_msg("%s: exit %d", cmd, rc);

  size_t n;
  snprintf(p, sizeof p, "%s/out/train.jsonl", dir);
  json_t *train = read_jsonl(p, &n);
  assert_int_equal(n, 12);
  json_t *first = json_array_get(train, 0);
  assert_string_equal(json_string_value(json_object_get(first, "key")), "train/00000");
  assert_string_equal(json_string_value(json_object_get(first, "image")), "train/00000.png");
  assert_string_equal(json_string_value(json_object_get(first, "text")), "a photo of a t-shirt");
  json_t *item9 = json_array_get(train, 9);
  assert_string_equal(json_string_value(json_object_get(json_object_get(item9, "meta"), "class")),
                      "Ankle boot");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(item9, "meta"), "label")), 9);
  assert_non_null(strstr(json_string_value(json_object_get(item9, "text")), "an ankle boot"));
  /* Pixels of image 7 (a 4x3 PNG) are the idx bytes. */
  snprintf(p, sizeof p, "%s/out/train/00007.png", dir);
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  assert_true(png_image_begin_read_from_file(&img, p));
  assert_int_equal(img.width, 4);
  assert_int_equal(img.height, 3);
  img.format = PNG_FORMAT_GRAY;
  uint8_t px[12];
  assert_true(png_image_finish_read(&img, NULL, px, 0, NULL));
  for (int y = 0; y < 3; y++)
    for (int x = 0; x < 4; x++)
      if (px[y * 4 + x] != (uint8_t)(7 * 31 + y * 7 + x))
        fail_msg("pixel (%d,%d): %d, want %d", x, y, px[y * 4 + x], 7 * 31 + y * 7 + x);

  snprintf(p, sizeof p, "%s/out/test.jsonl", dir);
  json_t *test = read_jsonl(p, &n);
  assert_int_equal(n, 3);
  assert_int_equal(
      json_integer_value(json_object_get(json_object_get(json_array_get(test, 0), "meta"), "label")),
      1);
  snprintf(p, sizeof p, "%s/out/classes.jsonl", dir);
  json_t *classes = read_jsonl(p, &n);
  assert_int_equal(n, 10);
  for (size_t c = 0; c < 10; c++) {
    json_t *cl = json_array_get(classes, c);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(cl, "meta"), "label")),
                     (json_int_t)c);
    assert_null(json_object_get(cl, "image"));
    for (size_t d = 0; d < c; d++)
      assert_string_not_equal(json_string_value(json_object_get(cl, "text")),
                              json_string_value(json_object_get(json_array_get(classes, d), "text")));
  }
  /* Zero-shot: the 3 test images without text, then the 10 classes; the
   * pairs give each image its true class. */
  snprintf(p, sizeof p, "%s/out/zeroshot.jsonl", dir);
  json_t *zs = read_jsonl(p, &n);
  assert_int_equal(n, 3 + 10);
  for (size_t k = 0; k < 3; k++) {
    json_t *z = json_array_get(zs, k);
    assert_null(json_object_get(z, "text"));
    assert_string_equal(json_string_value(json_object_get(z, "image")),
                        json_string_value(json_object_get(json_array_get(test, k), "image")));
  }
  assert_string_equal(json_string_value(json_object_get(json_array_get(zs, 12), "key")), "class/9");
  snprintf(p, sizeof p, "%s/out/zeroshot-pairs.jsonl", dir);
  json_t *pairs = read_jsonl(p, &n);
  assert_int_equal(n, 3);
  for (size_t k = 0; k < 3; k++) {
    char want[32];
    snprintf(want, sizeof want, "class/%zu", (k + 1) % 10);
    assert_string_equal(json_string_value(json_object_get(json_array_get(pairs, k), "text")), want);
    assert_string_equal(json_string_value(json_object_get(json_array_get(pairs, k), "image")),
                        json_string_value(json_object_get(json_array_get(test, k), "key")));
  }
  json_decref(zs);
  json_decref(pairs);
  json_decref(train);
  json_decref(test);
  json_decref(classes);

  /* Labels that do not match the images: refused. */
  uint8_t lab[8 + 5] = {0, 0, 8, 1, 0, 0, 0, 5};
  snprintf(p, sizeof p, "%s/src/t10k-labels-idx1-ubyte.gz", dir);
  write_gz(p, lab, sizeof lab);
  snprintf(cmd, sizeof cmd, "%s --src %s/src --out %s/out3 2>/dev/null", tool, dir, dir);
  assert_int_not_equal(run_tool(cmd), 0);
  rm_tree(dir);
  free(dir);
}

/* ---- tools/check-catalog.py: the check of the script-built sets ------- */

/* What the dataset written by write_checked_set() gets wrong, and the words
 * the checker must say about it (so that a failure is the right failure). */
typedef enum {
  SET_SOUND,
  SET_CONCEPT_IN_TRAIN_AND_TEST,
  SET_CATALOG_LACKS_A_ROW,
  SET_IMAGE_MISSING,
  SET_IMAGE_NOT_A_PICTURE,
  SET_IMAGE_TOO_SMALL,
  SET_JPEG_TRUNCATED,
  SET_LINE_NOT_JSON,
  SET_KEY_TWICE,
  SET_SPLIT_NOT_ITS_FILE,
  SET_TEXT_EMPTY,
  SET_TEXTS_NOT_STRINGS,
  SET_WEIGHT_NEGATIVE,
  SET_ROWS_UNSORTED,
  SET_NO_TEST_ROWS,
} set_fault;

static const struct {
  set_fault fault;
  const char *says;
} set_faults[] = {
    {SET_CONCEPT_IN_TRAIN_AND_TEST, "concepts in train and test"},
    {SET_CATALOG_LACKS_A_ROW, "is not catalog.jsonl"},
    {SET_IMAGE_MISSING, "No such file"},
    {SET_IMAGE_NOT_A_PICTURE, "neither PNG nor JPEG"},
    {SET_IMAGE_TOO_SMALL, "is 3x2 (sides 8..1024)"},
    {SET_JPEG_TRUNCATED, "JPEG"},
    {SET_LINE_NOT_JSON, "not JSON"},
    {SET_KEY_TWICE, "key k08 again"},
    {SET_SPLIT_NOT_ITS_FILE, "meta.split 'test' in train.jsonl"},
    {SET_TEXT_EMPTY, "k02 has no text"},
    {SET_TEXTS_NOT_STRINGS, "texts is not a map"},
    {SET_WEIGHT_NEGATIVE, "weight -1"},
    {SET_ROWS_UNSORTED, "not sorted"},
    {SET_NO_TEST_ROWS, "test holds 0 of"},
};

/* A JPEG's markers up to its frame header (20 x 10), as the checker reads
 * them; whole = 0 cuts it inside the frame header. */
static void jpeg_header_file(const char *path, int whole) {
  static const uint8_t jpg[] = {
      0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 'J',  'F',  'I',  'F',  0x00, 0x01, 0x01,
      0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00,
      0x0A, 0x00, 0x14, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01,
      0xFF, 0xD9};
  write_file(path, jpg, whole ? sizeof jpg : 24);
}

/* Ten rows k00..k09 in DIR: k03 and k07 test, k05 held out as a style (its
 * concept is k00's, as a style's are), the others train; even rows a 16x12
 * PNG, odd rows a JPEG.  catalog.jsonl is every row in key order. */
static void write_checked_set(const char *dir, set_fault fault) {
  char p[512];
  FILE *f[3], *cat;
  const char *names[3] = {"train", "test", "style"};
  for (int s = 0; s < 3; s++) {
    snprintf(p, sizeof p, "%s/%s.jsonl", dir, names[s]);
    assert_non_null(f[s] = fopen(p, "w"));
  }
  snprintf(p, sizeof p, "%s/catalog.jsonl", dir);
  assert_non_null(cat = fopen(p, "w"));
  char lines[10][512];
  int split_of[10];
  for (int i = 0; i < 10; i++) {
    int split = (i == 3 || i == 7) ? 1 : i == 5 ? 2 : 0;
    if (fault == SET_NO_TEST_ROWS && split == 1) split = 0;
    char image[64], concept[16], key[16], text[32], texts[64], weight[16];
    snprintf(image, sizeof image, "img%02d.%s", i, i % 2 ? "jpg" : "png");
    snprintf(p, sizeof p, "%s/%s", dir, image);
    if (i % 2)
      jpeg_header_file(p, !(fault == SET_JPEG_TRUNCATED && i == 1));
    else
      png_file(p, (fault == SET_IMAGE_TOO_SMALL && i == 4) ? 3 : 16,
               (fault == SET_IMAGE_TOO_SMALL && i == 4) ? 2 : 12, 0);
    if (fault == SET_IMAGE_MISSING && i == 1) snprintf(image, sizeof image, "missing.png");
    if (fault == SET_IMAGE_NOT_A_PICTURE && i == 2) {
      snprintf(image, sizeof image, "notes.txt");
      snprintf(p, sizeof p, "%s/notes.txt", dir);
      write_file(p, "not a picture\n", 14);
    }
    snprintf(key, sizeof key, "k%02d", (fault == SET_KEY_TWICE && i == 9) ? 8 : i);
    snprintf(concept, sizeof concept, "c%02d",
             (i == 5 || (fault == SET_CONCEPT_IN_TRAIN_AND_TEST && i == 3)) ? 0 : i);
    snprintf(text, sizeof text, "%s", (fault == SET_TEXT_EMPTY && i == 2) ? "" : "a thing");
    snprintf(texts, sizeof texts, "%s",
             (fault == SET_TEXTS_NOT_STRINGS && i == 6) ? "{\"de\":1}" : "{\"de\":\"ein Ding\"}");
    snprintf(weight, sizeof weight, "%s", (fault == SET_WEIGHT_NEGATIVE && i == 8) ? "-1" : "1.0");
    const char *split_name = names[split];
    if (fault == SET_SPLIT_NOT_ITS_FILE && i == 1) split_name = "test";
    snprintf(lines[i], sizeof lines[i],
             "{\"key\":\"%s\",\"image\":\"%s\",\"text\":\"%s\",\"texts\":%s,\"weight\":%s,"
             "\"meta\":{\"concept\":\"%s\",\"split\":\"%s\"}}\n",
             key, image, text, texts, weight, concept, split_name);
    if (fault == SET_LINE_NOT_JSON && i == 6) snprintf(lines[i], sizeof lines[i], "{not json\n");
    split_of[i] = split;
  }
  for (int n = 0; n < 10; n++) {
    int i = fault == SET_ROWS_UNSORTED ? 9 - n : n;
    fputs(lines[i], f[split_of[i]]);
  }
  for (int i = 0; i < 10; i++)
    if (!(fault == SET_CATALOG_LACKS_A_ROW && i == 8)) fputs(lines[i], cat);
  for (int s = 0; s < 3; s++) assert_int_equal(fclose(f[s]), 0);
  assert_int_equal(fclose(cat), 0);
  snprintf(p, sizeof p, "%s/stats.json", dir);
  write_file(p, "{\"items\": 10}\n", 14);
}

/* Runs the checker on DIR; its exit status, stderr in *log (malloc'd). */
static int run_checker(const char *dir, char **log) {
  char cmd[1024], p[512];
  snprintf(p, sizeof p, "%s/check.log", dir);
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 tools/check-catalog.py %s 2>%s", dir, p);
  int rc = run_tool(cmd);
  FILE *f = fopen(p, "r");
  assert_non_null(f);
  *log = calloc(1, 65536);
  assert_non_null(*log);
  size_t n = fread(*log, 1, 65535, f);
  (*log)[n] = 0;
  fclose(f);
  return rc;
}

static void test_check_catalog_accepts_sound_and_names_each_fault(void **state) {
  (void)state;
  if (access("/usr/bin/python3", X_OK)) fail_msg("/usr/bin/python3 is missing (tools/deps.sh)");
  if (access("tools/check-catalog.py", R_OK)) fail_msg("run from the repository root");
  char *dir = make_tmpdir();
  char sub[512], *log;
  snprintf(sub, sizeof sub, "%s/sound", dir);
  mkdir(sub, 0755);
  write_checked_set(sub, SET_SOUND);
  int rc = run_checker(sub, &log);
  if (rc != 0 || !strstr(log, "7 train, 2 test, 1 style rows, 10 images: ok"))
    fail_msg("sound set: exit %d, said: %s", rc, log);
  free(log);
  for (size_t i = 0; i < sizeof set_faults / sizeof set_faults[0]; i++) {
    snprintf(sub, sizeof sub, "%s/fault%zu", dir, i);
    mkdir(sub, 0755);
    write_checked_set(sub, set_faults[i].fault);
    rc = run_checker(sub, &log);
    if (rc != 1 || !strstr(log, set_faults[i].says))
      fail_msg("fault %zu: exit %d (want 1), want \"%s\" in: %s", i, rc, set_faults[i].says, log);
    free(log);
  }
  rm_tree(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fnv1a64_reference_vectors),
      cmocka_unit_test(test_split_is_hash_mod_10_and_about_a_tenth),
      cmocka_unit_test(test_svg_metadata_work_fields_not_agent_titles),
      cmocka_unit_test(test_svg_metadata_absent_plain_subject_and_broken_files),
      cmocka_unit_test(test_caption_title_description_keywords),
      cmocka_unit_test(test_caption_generic_titles_fall_back_to_file_name),
      cmocka_unit_test(test_caption_descriptions_dropped_cut_or_leading),
      cmocka_unit_test(test_caption_length_cap_and_utf8),
      cmocka_unit_test(test_caption_boilerplate_by_frequency),
      cmocka_unit_test(test_text_normalize),
      cmocka_unit_test(test_idx_parse),
      cmocka_unit_test(test_read_gz_plain_compressed_truncated_capped),
      cmocka_unit_test(test_png_gray_round_trip_and_pixel_checks),
      cmocka_unit_test(test_openclipart_catalog_on_a_small_tree),
      cmocka_unit_test(test_fashion_mnist_on_tiny_idx_files),
      cmocka_unit_test(test_check_catalog_accepts_sound_and_names_each_fault),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
