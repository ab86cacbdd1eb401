/* faiss_c_ext.h - FAISS C API functions that upstream has but the C API
 * headers shipped with Debian's FAISS 1.7.3 lack.
 *
 * Every declaration here carries the name and signature of upstream's
 * c_api (Index_c.h, IndexIVF_c.h, IndexHNSW_c.h,
 * impl/AuxIndexStructures_c.h of FAISS >= 1.7.4), so index.c compiles
 * unchanged against a real libfaiss_c.  With FAISS_PREFIX set, the
 * Makefile defines VLM_FAISS_REAL_CAPI and this header includes upstream's
 * own headers instead of declaring anything.  Without it, the functions
 * are implemented by index/faiss_c_api.cpp over Debian's libfaiss.a.
 *
 * A real libfaiss_c must be >= 1.7.4: older C APIs have no search
 * parameters.
 */
#ifndef VLM_FAISS_C_EXT_H
#define VLM_FAISS_C_EXT_H

#include <stddef.h>
#include <stdint.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/faiss_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#ifdef VLM_FAISS_REAL_CAPI
#include <faiss/c_api/IndexHNSW_c.h>
#else

#ifdef __cplusplus
extern "C" {
#endif

#ifndef FAISS_DECLARE_SEARCH_PARAMETERS_DOWNCAST
#define FAISS_DECLARE_SEARCH_PARAMETERS_DOWNCAST(clazz) \
    Faiss##clazz* faiss_##clazz##_cast(FaissSearchParameters*);
#endif

/* Index_c.h */
FAISS_DECLARE_CLASS(SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParameters)

int faiss_SearchParameters_new(
        FaissSearchParameters** p_sp,
        FaissIDSelector* sel);

int faiss_Index_search_with_params(
        const FaissIndex* index,
        idx_t n,
        const float* x,
        idx_t k,
        const FaissSearchParameters* params,
        float* distances,
        idx_t* labels);

/* IndexIVF_c.h */
FAISS_DECLARE_CLASS_INHERITED(SearchParametersIVF, SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParametersIVF)
FAISS_DECLARE_SEARCH_PARAMETERS_DOWNCAST(SearchParametersIVF)

int faiss_SearchParametersIVF_new(FaissSearchParametersIVF** p_sp);
int faiss_SearchParametersIVF_new_with(
        FaissSearchParametersIVF** p_sp,
        FaissIDSelector* sel,
        size_t nprobe,
        size_t max_codes);

FAISS_DECLARE_GETTER(SearchParametersIVF, const FaissIDSelector*, sel)
FAISS_DECLARE_GETTER_SETTER(SearchParametersIVF, size_t, nprobe)
FAISS_DECLARE_GETTER_SETTER(SearchParametersIVF, size_t, max_codes)

/* IndexHNSW_c.h */
FAISS_DECLARE_CLASS_INHERITED(SearchParametersHNSW, SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParametersHNSW)
FAISS_DECLARE_SEARCH_PARAMETERS_DOWNCAST(SearchParametersHNSW)

int faiss_SearchParametersHNSW_new(FaissSearchParametersHNSW** p_sp);
int faiss_SearchParametersHNSW_new_with(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel,
        int efSearch);

FAISS_DECLARE_GETTER(SearchParametersHNSW, const FaissIDSelector*, sel)
FAISS_DECLARE_GETTER_SETTER(SearchParametersHNSW, int, efSearch)

/* impl/AuxIndexStructures_c.h */
FAISS_DECLARE_CLASS(IDSelectorBitmap)
FAISS_DECLARE_DESTRUCTOR(IDSelectorBitmap)

FAISS_DECLARE_GETTER(IDSelectorBitmap, size_t, n)
FAISS_DECLARE_GETTER(IDSelectorBitmap, const uint8_t*, bitmap)

/* n is the size of the bitmap in bytes: id is selected iff id / 8 < n and
 * bit (id % 8) of bitmap[id / 8] is set.  The bitmap is not copied. */
int faiss_IDSelectorBitmap_new(
        FaissIDSelectorBitmap** p_sel,
        size_t n,
        const uint8_t* bitmap);

#ifdef __cplusplus
}
#endif

#endif /* VLM_FAISS_REAL_CAPI */


/* ---- vlmdb extensions (index/faiss_ondisk.cpp; not upstream's) ----
 * IVF inverted lists in one file on disk, mapped at load.  Each returns 0
 * or -1 with the reason in vlm_faiss_ondisk_last_error() (thread-local,
 * valid until the thread's next call). */
#ifdef __cplusplus
extern "C" {
#endif

/* vlmdb's own (index/faiss_c_api.cpp, not upstream): HNSW parameters whose
 * one-query search acts as if the vector with the caller's id hidden_id
 * were not in the graph.  The C API over Debian's FAISS only. */
int vlm_faiss_SearchParametersHNSW_new_hiding(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel,
        int efSearch,
        idx_t hidden_id);

/* vlmdb's own: HNSW parameters whose search scores every vector sel
 * allows, exactly, from the index's flat store (one pass, no graph walk).
 * The C API over Debian's FAISS only. */
int vlm_faiss_SearchParametersHNSW_new_scan(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel);

const char* vlm_faiss_ondisk_last_error(void);

/* Back a large flat or HNSW index's vectors and graph with transparent
 * huge pages (MADV_HUGEPAGE, then MADV_COLLAPSE where the kernel has it):
 * searches take fewer TLB misses.  Best effort, indexes under 64 MiB left
 * alone; 0, or -1 with the reason. */
int vlm_faiss_hugepages(const FaissIndex* index);

/* 1 when index is an IVF whose lists are FAISS's OnDiskInvertedLists in
 * a list file of their own, 2 when they are an ordinary index file's
 * lists mapped in place (read with IO_FLAG_MMAP), 0 otherwise. */
int vlm_faiss_ivf_is_ondisk(const FaissIndex* index);

/* Merge the inverted lists of nparts IVF indexes (each trained exactly as
 * into: same centroids and code book) into one file at ivfdata_path
 * (created or truncated), part i's ids moved up by id_offsets[i], and make
 * that file into's lists (OnDiskInvertedLists::merge_from, then
 * IndexIVF::replace_invlists; into's ntotal set).  into must be trained
 * and empty.  The file is msync'ed and fsync'ed before this returns. */
int vlm_faiss_ivf_merge_ondisk(
        FaissIndex* into,
        const FaissIndex* const* parts,
        const int64_t* id_offsets,
        int nparts,
        const char* ivfdata_path);

/* For an index read with IO_FLAG_SKIP_IVF_DATA whose lists are on disk:
 * map its list file read-only, found by its base name in dir (so the
 * index and its list file can move together), after checking that every
 * list lies inside the file.  *file_bytes gets the file's size. */
int vlm_faiss_ivf_map_ondisk(
        FaissIndex* index,
        const char* dir,
        uint64_t* file_bytes);

/* The list file an on-disk index names ("" for none), and a new name for
 * it (the mapping is kept: the caller moves or links the file). */
const char* vlm_faiss_ivf_ondisk_filename(const FaissIndex* index);

/* For an index whose lists are mapped (either way): every list inside
 * the mapping.  0 (also for other indexes), or -1 with the reason. */
int vlm_faiss_ivf_check_mapped(const FaissIndex* index);

/* Count the ids of an IVF's lists whose bit is clear in bitmap[nbits] or
 * that appear a second time; *first gets the first (-1: none). */
int vlm_faiss_ivf_ids_outside(
        const FaissIndex* index,
        const uint8_t* bitmap,
        int64_t nbits,
        int64_t* outside,
        int64_t* first);
int vlm_faiss_ivf_set_ondisk_filename(FaissIndex* index, const char* path);

/* A Flat index (or an IDMap over one): room for n more vectors, so adding
 * them in chunks does not regrow (copy, zero and unmap) its storage time
 * after time.  0 (nothing done for other kinds), or -1 with the reason. */
int vlm_faiss_flat_reserve(FaissIndex* index, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
