/* vlm_data.h - building vlmdb's example catalogs from Debian's data
 * packages (openclipart-png/-svg, dataset-fashion-mnist).
 *
 * These functions back the programs tools/openclipart-catalog.c and
 * tools/fashion-mnist.c and are tested by tests/test_data.c.  They are not
 * part of libvlm: the tools link them from tools/lib/.  Every function that
 * can fail returns 0 or a negative VLM_E* code and sets vlm_errmsg();
 * destructors accept NULL.  Strings are UTF-8 and owned by the struct that
 * holds them.  Nothing here keeps global state, so separate objects may be
 * used from separate threads.
 */
#ifndef VLM_DATA_H
#define VLM_DATA_H

#include <stddef.h>
#include <stdint.h>

/* ---- train/test split ---------------------------------------------- */

/* FNV-1a, 64 bit: offset basis 0xcbf29ce484222325, prime 0x100000001b3,
 * one byte at a time (xor, then multiply). */
uint64_t vlm_data_fnv1a64(const void *data, size_t len);

/* 1 when key belongs to the test split: vlm_data_fnv1a64 of the key's
 * bytes (no terminating NUL) mod 10 == 0, else 0 (train).  About 10%. */
int vlm_data_is_test(const char *key);

/* ---- SVG metadata (Dublin Core / Creative Commons RDF) --------------- */

/* What an SVG says about itself.  Each string is whitespace-normalized
 * (runs of white space become one space, trimmed) and NULL when the file
 * has no such element or it is empty. */
typedef struct {
  char *title;        /* the work's dc:title (not an agent's) */
  char *description;  /* the work's dc:description */
  char *creator;      /* dc:creator/cc:Agent/dc:title (or dc:creator text) */
  char *license;      /* cc:license/@rdf:resource */
  char *svg_title;    /* the first SVG <title> element */
  char **keywords;    /* dc:subject/rdf:Bag/rdf:li texts, in file order,
                         empty ones left out */
  int nkeywords;
} vlm_data_svg_meta;

/* Parse an SVG file's metadata.  A file that is not well-formed XML is
 * parsed in libxml2's recovery mode; VLM_EFORMAT only when nothing could
 * be read.  Network access and external entities are disabled.  On
 * failure *out is left zeroed. */
int vlm_data_svg_meta_read(const char *path, vlm_data_svg_meta *out);
/* The same from memory; name appears in error messages. */
int vlm_data_svg_meta_parse(const char *buf, size_t len, const char *name,
                            vlm_data_svg_meta *out);
void vlm_data_svg_meta_free(vlm_data_svg_meta *meta);

/* ---- captions -------------------------------------------------------- */

/* Counts of titles and descriptions over a whole collection: text that
 * many different files share ("Open Clip Art Library", "UK roadsigns",
 * a collection's name) is boilerplate, not a caption. */
typedef struct vlm_data_boilerplate vlm_data_boilerplate;

/* A title seen in at least min_titles files, or a description seen in at
 * least min_descriptions files, is boilerplate (openclipart-catalog uses
 * 10 and 20: real descriptions repeat more often than real titles, over
 * the variants of one drawing). */
int vlm_data_boilerplate_new(int min_titles, int min_descriptions,
                             vlm_data_boilerplate **out);
/* Count one file's title and description. */
int vlm_data_boilerplate_add(vlm_data_boilerplate *bp,
                             const vlm_data_svg_meta *meta);
/* How many files had this text as title (or as description), compared
 * after normalization (ASCII case folded, URLs and punctuation removed). */
int vlm_data_boilerplate_titles(const vlm_data_boilerplate *bp,
                                const char *text);
int vlm_data_boilerplate_descriptions(const vlm_data_boilerplate *bp,
                                      const char *text);
void vlm_data_boilerplate_free(vlm_data_boilerplate *bp);

/* Where the caption's name came from. */
typedef enum {
  VLM_DATA_NAME_NONE = 0,   /* nothing usable: the caption is keywords or
                               the category only */
  VLM_DATA_NAME_TITLE,      /* the work's dc:title */
  VLM_DATA_NAME_SVG_TITLE,  /* the SVG <title> element */
  VLM_DATA_NAME_STEM        /* derived from the file name */
} vlm_data_name_source;

#define VLM_DATA_CAPTION_MAX 240   /* bytes of a caption, at most */
#define VLM_DATA_DESCRIPTION_MAX 160
#define VLM_DATA_CAPTION_KEYWORDS 8 /* keywords in the caption, at most */

/* A cleaned caption and its parts. */
typedef struct {
  char *text;          /* the caption: "name. description. kw, kw, ..."
                          (parts absent are left out); never empty */
  char *name;          /* cleaned title (or stem-derived name); may be NULL */
  char *description;   /* cleaned description; may be NULL */
  char *author;        /* cleaned creator; may be NULL */
  char **keywords;     /* cleaned keywords (all of them, not only the ones
                          in text) */
  int nkeywords;
  vlm_data_name_source name_source;
  int usable;          /* 1 when the caption says what the image shows:
                          a real title or a kept description, or a
                          file-name-derived name with a word of 3+ letters */
} vlm_data_caption;

/* Build the caption of one clip-art item.  stem is the file name without
 * directory and extension ("2_dead_frogs_lumen_desig_01"); fallback is
 * the text used when nothing else is left (the category path, e.g.
 * "special gradients"); bp may be NULL (no frequency rule).
 *
 * Cleaning: URLs, e-mail addresses and "HASH(0x...)" are removed; titles
 * that are a collection's or the author's name, or appear in bp as
 * boilerplate, give way to a name derived from the file name (trailing
 * numbers and the truncated author name stripped); descriptions that are
 * boilerplate, repeat the title or are empty after cleaning are dropped,
 * long ones are cut at a sentence or word boundary; keywords are lower
 * case with '_' as space, deduplicated, without those already in the name
 * or description and without filler ("hash", "clipart", numbers). */
int vlm_data_caption_build(const vlm_data_svg_meta *meta, const char *stem,
                           const char *fallback,
                           const vlm_data_boilerplate *bp,
                           vlm_data_caption *out);
void vlm_data_caption_free(vlm_data_caption *caption);

/* ---- small text helpers (exposed for tests) ------------------------- */

/* A copy of s with white space runs collapsed to one space, trimmed, and
 * invalid UTF-8 bytes replaced by '?'.  NULL in, NULL out; *out NULL on
 * allocation failure is reported as VLM_ENOMEM. */
int vlm_data_text_normalize(const char *s, char **out);

/* ---- IDX files (MNIST format) --------------------------------------- */

/* A view into an IDX buffer: magic 0x0000TTNN, TT the element type (only
 * 0x08, unsigned byte, is supported), NN the number of dimensions (1..4),
 * then NN big-endian uint32 sizes, then the elements. */
typedef struct {
  int ndim;
  uint32_t dims[4];
  size_t count;            /* product of dims */
  const uint8_t *data;     /* count bytes, inside the parsed buffer */
} vlm_data_idx;

/* Parse buf (not copied: out->data points into it).  VLM_EFORMAT on a bad
 * magic, VLM_EUNSUPPORTED on another element type, VLM_ECORRUPT when the
 * buffer is shorter than the header says (trailing bytes are an error
 * too). */
int vlm_data_idx_parse(const uint8_t *buf, size_t len, vlm_data_idx *out);

/* Read a whole file, gunzipping it when it is gzip-compressed (plain files
 * are read as they are).  *buf is malloc'd; free() it.  max_len caps the
 * decompressed size (VLM_ETOOBIG beyond). */
int vlm_data_read_gz(const char *path, size_t max_len, uint8_t **buf,
                     size_t *len);

/* ---- PNG ------------------------------------------------------------- */

typedef struct {
  uint32_t width, height;
  int bit_depth, color_type, interlace;
} vlm_data_png_info;

/* Read a PNG's IHDR (the first 33 bytes) without decoding pixels. */
int vlm_data_png_info_read(const char *path, vlm_data_png_info *out);

/* What a PNG's pixels look like, for spotting blank renders and images
 * whose transparent background hides a colour. */
typedef struct {
  int blank_on_white;   /* 1: every pixel, composited over white, is the
                           same colour (nothing to see) */
  int blank_no_alpha;   /* 1: every pixel is the same colour when alpha is
                           ignored (what VLM_ALPHA_DROP shows a model) */
  double transparent;   /* fraction of pixels with alpha < 128 */
  int dark_background;  /* 1: transparent pixels hold a dark colour (mean
                           luma < 64), so VLM_ALPHA_DROP shows a black
                           background where a viewer sees white */
} vlm_data_png_pixels;

/* Decode a PNG (at most max_pixels = width*height, else VLM_ETOOBIG
 * before any allocation) and describe its pixels. */
int vlm_data_png_pixels_read(const char *path, uint64_t max_pixels,
                             vlm_data_png_pixels *out);

/* Write an 8-bit grayscale PNG of w x h pixels (row-major, w bytes per
 * row) through a temp file renamed into place (a reader never sees half
 * a file; an existing file is unlinked first). */
int vlm_data_png_write_gray(const char *path, const uint8_t *pixels, int w,
                            int h);

#endif
