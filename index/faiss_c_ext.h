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

#ifdef __cplusplus
}
#endif
#endif
