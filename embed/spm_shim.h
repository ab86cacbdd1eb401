/* spm_shim.h - the few calls vlmdb needs from Debian's libsentencepiece
 * (C++), as a C API (internal to embed/; spm_shim.cpp).  No C++
 * exception crosses it: every entry point catches them and returns -1
 * with a message.  A loaded model is read-only; encoding is thread safe.
 */
#ifndef VLM_SPM_SHIM_H
#define VLM_SPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vlm__spm vlm__spm;

/* Load a serialized ModelProto (the bytes of a .model file, possibly with
 * fields appended).  0, or -1 with a message in err. */
int vlm__spm_load(const void *proto, size_t len, vlm__spm **out, char *err, size_t err_len);
void vlm__spm_free(vlm__spm *sp); /* accepts NULL */

int vlm__spm_piece_size(const vlm__spm *sp);
int vlm__spm_unk_id(const vlm__spm *sp);
/* PieceToId (the unknown id for a string that is no piece). */
int vlm__spm_piece_to_id(const vlm__spm *sp, const char *piece, size_t len);
/* IdToPiece: a pointer valid while sp lives, or NULL out of range. */
const char *vlm__spm_id_to_piece(const vlm__spm *sp, int id, size_t *len);

/* The pieces of Encode(text) as strings, concatenated in *bytes
 * (malloc'd) with piece i at [off[i], off[i + 1]) (*off malloc'd, n + 1
 * entries).  0, or -1 with a message in err. */
int vlm__spm_encode(const vlm__spm *sp, const char *text, size_t len, char **bytes,
                    size_t **off, size_t *n, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
