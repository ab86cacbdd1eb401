// spm_shim.cpp - libsentencepiece behind the C API of spm_shim.h.  Every
// entry point catches all exceptions (std::bad_alloc above all): none may
// unwind into C.
#include "spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct vlm__spm {
  sentencepiece::SentencePieceProcessor proc;
};

static void set_err(char *err, size_t err_len, const char *msg) {
  if (err && err_len) std::snprintf(err, err_len, "%s", msg);
}

extern "C" int vlm__spm_load(const void *proto, size_t len, vlm__spm **out, char *err,
                             size_t err_len) {
  *out = nullptr;
  vlm__spm *sp = nullptr;
  try {
    sp = new vlm__spm;
    auto status = sp->proc.LoadFromSerializedProto(
        absl::string_view(static_cast<const char *>(proto), len));
    if (!status.ok()) {
      set_err(err, err_len, status.ToString().c_str());
      delete sp;
      return -1;
    }
    if (sp->proc.GetPieceSize() <= 0) {
      set_err(err, err_len, "the model has no pieces");
      delete sp;
      return -1;
    }
    *out = sp;
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
  } catch (...) {
    set_err(err, err_len, "unknown C++ exception");
  }
  delete sp;
  return -1;
}

extern "C" void vlm__spm_free(vlm__spm *sp) {
  try {
    delete sp;
  } catch (...) {
  }
}

extern "C" int vlm__spm_piece_size(const vlm__spm *sp) {
  try {
    return sp->proc.GetPieceSize();
  } catch (...) {
    return 0;
  }
}

extern "C" int vlm__spm_unk_id(const vlm__spm *sp) {
  try {
    return sp->proc.unk_id();
  } catch (...) {
    return -1;
  }
}

extern "C" int vlm__spm_piece_to_id(const vlm__spm *sp, const char *piece, size_t len) {
  try {
    return sp->proc.PieceToId(absl::string_view(piece, len));
  } catch (...) {
    return sp->proc.unk_id();
  }
}

extern "C" const char *vlm__spm_id_to_piece(const vlm__spm *sp, int id, size_t *len) {
  try {
    if (id < 0 || id >= sp->proc.GetPieceSize()) return nullptr;
    const std::string &p = sp->proc.IdToPiece(id);
    *len = p.size();
    return p.c_str();
  } catch (...) {
    return nullptr;
  }
}

extern "C" int vlm__spm_encode(const vlm__spm *sp, const char *text, size_t len, char **bytes,
                               size_t **off, size_t *n, char *err, size_t err_len) {
  *bytes = nullptr;
  *off = nullptr;
  *n = 0;
  try {
    std::vector<std::string> pieces;
    auto status = sp->proc.Encode(absl::string_view(text, len), &pieces);
    if (!status.ok()) {
      set_err(err, err_len, status.ToString().c_str());
      return -1;
    }
    size_t total = 0;
    for (const auto &p : pieces) total += p.size();
    char *b = static_cast<char *>(std::malloc(total + 1));
    size_t *o = static_cast<size_t *>(std::malloc((pieces.size() + 1) * sizeof *o));
    if (!b || !o) {
      std::free(b);
      std::free(o);
      set_err(err, err_len, "out of memory");
      return -1;
    }
    size_t at = 0;
    for (size_t i = 0; i < pieces.size(); i++) {
      o[i] = at;
      if (!pieces[i].empty()) std::memcpy(b + at, pieces[i].data(), pieces[i].size());
      at += pieces[i].size();
    }
    o[pieces.size()] = at;
    b[at] = 0;
    *bytes = b;
    *off = o;
    *n = pieces.size();
    return 0;
  } catch (const std::exception &e) {
    set_err(err, err_len, e.what());
  } catch (...) {
    set_err(err, err_len, "unknown C++ exception");
  }
  return -1;
}
