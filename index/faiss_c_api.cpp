/* faiss_c_api.cpp - the part of FAISS's C API that vlmdb calls, over
 * Debian's static C++ libfaiss.a (1.7.3 ships the C API headers but not
 * libfaiss_c).
 *
 * Each function has upstream's name, signature and behaviour (upstream
 * c_api/ sources): C++ exceptions are caught at the boundary, stored in a
 * thread-local exception_ptr, and reported as FaissErrorCode; their text
 * is read back with faiss_get_last_error().  Nothing here is called by
 * vlmdb's C code except through these faiss_* names, and building with
 * FAISS_PREFIX leaves this file out in favour of a real libfaiss_c.
 *
 * One deliberate difference from 1.7.3's C++: IndexIDMap::search() in
 * 1.7.3 throws on any SearchParameters.  Upstream (>= 1.7.4) instead runs
 * the sub-index search with the selector translated from the caller's ids
 * to the sub-index's sequential ids.  faiss_Index_search_with_params does
 * the same here, so a selector over user ids works on "IDMap,Flat" and
 * "IDMap,HNSW32" exactly as it does with a real, current libfaiss_c.
 * A second one: efSearch in SearchParametersHNSW sizes the search queue as
 * upstream's does (hnsw_search_one below for one query, HNSWEfGate for
 * several).
 *
 * And one substitution that changes speed, not behaviour: Debian builds
 * libfaiss.a for baseline x86-64, so its fvec_inner_product/fvec_L2sqr
 * are scalar loops (one dependent add per element).  Every flat store
 * the shim creates or reads (the vectors under an HNSW graph, a Flat
 * index, an IVF coarse quantizer) is swapped for FastFlat, an IndexFlat
 * whose distance computer and small-batch search use SIMD kernels
 * compiled for this machine.  It is still an IndexFlat: write_index
 * writes it as one, so files stay plain FAISS files.
 */
#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/HNSW.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/distances.h>

#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <typeinfo>
#include <unordered_map>
#include <stdexcept>
#include <vector>

#include "faiss_c_ext.h"

#include <faiss/c_api/error_impl.h>
#include <faiss/c_api/utils/distances_c.h>
#include <faiss/c_api/macros_impl.h>

using faiss::Index;
using faiss::IndexIDMap;
using faiss::IndexIVF;
using faiss::SearchParameters;
using faiss::SearchParametersHNSW;
using faiss::SearchParametersIVF;

/* Upstream's CATCH_AND_HANDLE prints every exception to stderr unless
 * NDEBUG is set; a library must not write to stderr on a caller's bad
 * input, so this one only records it. */
#define VLM_CATCH                                                       \
    catch (faiss::FaissException & e) {                                 \
        faiss_last_exception = std::make_exception_ptr(e);              \
        return FAISS_EXCEPT;                                            \
    }                                                                   \
    catch (std::exception & e) {                                        \
        faiss_last_exception = std::make_exception_ptr(e);              \
        return STD_EXCEPT;                                              \
    }                                                                   \
    catch (...) {                                                       \
        faiss_last_exception = std::make_exception_ptr(                 \
                std::runtime_error("Unknown error"));                   \
        return UNKNOWN_EXCEPT;                                          \
    }                                                                   \
    return OK;

thread_local std::exception_ptr faiss_last_exception;

namespace {

/* SearchParametersHNSW that also hide one vertex from a one-query walk
 * (vlm_faiss_SearchParametersHNSW_new_hiding): hidden is the caller's id
 * on an IndexIDMap, the sub-index's sequential id below it. */
struct SearchParametersHNSWHiding : SearchParametersHNSW {
    faiss::Index::idx_t hidden = -1;
    /* score every vector the selector allows from the flat store, one
     * exact pass, instead of walking the graph */
    bool scan = false;
};

/* Selects sub-index id i iff the caller's selector selects id_map[i]. */
struct IDSelectorTranslated : faiss::IDSelector {
    const std::vector<faiss::Index::idx_t>& id_map;
    const faiss::IDSelector* sel;

    IDSelectorTranslated(
            const std::vector<faiss::Index::idx_t>& id_map_in,
            const faiss::IDSelector* sel_in)
            : id_map(id_map_in), sel(sel_in) {}

    bool is_member(idx_t id) const override {
        return id >= 0 && id < (idx_t)id_map.size() &&
                sel->is_member(id_map[id]);
    }
};

/* 1.7.3's HNSW::search sizes its candidate queue from the index's own
 * hnsw.efSearch and reads SearchParametersHNSW::efSearch only in its
 * stopping rule, so a per-call efSearch above the index's has almost no
 * effect (measured: recall flat from ef 16 to 256).  Upstream (>= 1.7.4)
 * uses max(params->efSearch, k) for both.  To get upstream's behaviour
 * without a data race, the shim sets hnsw.efSearch to the call's value
 * inside a gate: searches with the same efSearch run concurrently, a
 * search with a different one waits until the running ones finish (new
 * arrivals queue behind a waiter, so nobody starves), and the index's own
 * value is restored when the last search leaves, so write_index and
 * parameterless searches never see a borrowed value. */
class HNSWEfGate {
   public:
    void enter(faiss::HNSW& hnsw, int ef) {
        std::unique_lock<std::mutex> lock(mutex_);
        State& st = states_[&hnsw];
        if (st.active > 0 && !(st.ef == ef && st.waiting == 0)) {
            /* join a group only after a drain since we queued, so
             * same-ef arrivals cannot keep a waiter out forever */
            uint64_t gen = st.drains;
            st.waiting++;
            cv_.wait(lock, [&] {
                return st.active == 0 || (st.ef == ef && st.drains != gen);
            });
            st.waiting--;
        }
        if (st.active == 0) {
            st.saved = hnsw.efSearch;
            st.ef = ef;
            hnsw.efSearch = ef;
        }
        st.active++;
    }

    void leave(faiss::HNSW& hnsw) {
        std::lock_guard<std::mutex> lock(mutex_);
        State& st = states_[&hnsw];
        if (--st.active == 0) {
            hnsw.efSearch = st.saved;
            if (st.waiting == 0) {
                states_.erase(&hnsw);
            } else {
                st.drains++;
                cv_.notify_all();
            }
        }
    }

   private:
    struct State {
        int active = 0;  /* searches running with hnsw.efSearch == ef */
        int waiting = 0; /* searches waiting for another ef */
        int ef = 0;
        int saved = 0;   /* the index's own efSearch */
        uint64_t drains = 0;
    };
    std::mutex mutex_;
    std::condition_variable cv_;
    std::unordered_map<const faiss::HNSW*, State> states_;
};

HNSWEfGate hnsw_ef_gate;

/* ---- SIMD flat distances --------------------------------------------- */

#ifdef __AVX512F__
/* Horizontal sum through memory: GCC 12's extract/reduce intrinsics trip
 * -Wmaybe-uninitialized, and this runs once per distance. */
inline float hsum512(__m512 v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float s = 0;
    for (int i = 0; i < 8; i++)
        s += t[i] + t[i + 8];
    return s;
}
#endif

inline float dot_simd(const float* a, const float* b, size_t d) {
#ifdef __AVX512F__
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= d; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= d; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1);
        s1 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a + i),
                _mm512_maskz_loadu_ps(m, b + i),
                s1);
    }
    return hsum512(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#else
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[i + j] * b[i + j];
    for (; i < d; i++)
        s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
#endif
}

inline float l2_simd(const float* a, const float* b, size_t d) {
#ifdef __AVX512F__
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 t1 = _mm512_sub_ps(
                _mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        s0 = _mm512_fmadd_ps(t0, t0, s0);
        s1 = _mm512_fmadd_ps(t1, t1, s1);
    }
    for (; i < d; i += 16) {
        __mmask16 m = d - i >= 16 ? (__mmask16)0xffff
                                  : (__mmask16)((1u << (d - i)) - 1);
        __m512 t = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s0 = _mm512_fmadd_ps(t, t, s0);
    }
    return hsum512(_mm512_add_ps(s0, s1));
#else
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++) {
            float t = a[i + j] - b[i + j];
            s[j] += t * t;
        }
    for (; i < d; i++)
        s[0] += (a[i] - b[i]) * (a[i] - b[i]);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
#endif
}

struct FastFlatDis : faiss::FlatCodesDistanceComputer {
    size_t d;
    bool ip;
    const float* b;
    const float* q = nullptr;

    FastFlatDis(const faiss::IndexFlat& f)
            : faiss::FlatCodesDistanceComputer(f.codes.data(), f.code_size),
              d(f.d),
              ip(f.metric_type == faiss::METRIC_INNER_PRODUCT),
              b(f.get_xb()) {}

    void set_query(const float* x) override {
        q = x;
    }
    float distance_to_code(const uint8_t* code) override {
        const float* y = reinterpret_cast<const float*>(code);
        return ip ? dot_simd(q, y, d) : l2_simd(q, y, d);
    }
    float symmetric_dis(idx_t i, idx_t j) override {
        return ip ? dot_simd(b + i * d, b + j * d, d)
                  : l2_simd(b + i * d, b + j * d, d);
    }
};

struct FastFlat : faiss::IndexFlat {
    /* Takes over other's vectors (other is left empty). */
    explicit FastFlat(faiss::IndexFlat* other)
            : faiss::IndexFlat(other->d, other->metric_type) {
        metric_arg = other->metric_arg;
        verbose = other->verbose;
        is_trained = other->is_trained;
        ntotal = other->ntotal;
        codes.swap(other->codes);
        other->ntotal = 0;
    }

    faiss::FlatCodesDistanceComputer* get_FlatCodesDistanceComputer()
            const override {
        if (metric_type != faiss::METRIC_INNER_PRODUCT &&
            metric_type != faiss::METRIC_L2)
            return faiss::IndexFlat::get_FlatCodesDistanceComputer();
        return new FastFlatDis(*this);
    }

    /* Few queries: one SIMD pass over the vectors per query (FAISS's own
     * path for fewer than distance_compute_blas_threshold queries is the
     * scalar kernel).  Many: FAISS's BLAS path is already fast. */
    void search(
            idx_t n,
            const float* x,
            idx_t k,
            float* distances,
            idx_t* labels,
            const faiss::SearchParameters* params) const override {
        bool ip = metric_type == faiss::METRIC_INNER_PRODUCT;
        if (n >= faiss::distance_compute_blas_threshold ||
            (!ip && metric_type != faiss::METRIC_L2) ||
            (params && typeid(*params) != typeid(faiss::SearchParameters))) {
            faiss::IndexFlat::search(n, x, k, distances, labels, params);
            return;
        }
        const faiss::IDSelector* sel = params ? params->sel : nullptr;
        const float* xb = get_xb();
        for (idx_t q = 0; q < n; q++) {
            const float* xq = x + q * d;
            float* D = distances + q * k;
            idx_t* I = labels + q * k;
            if (ip) {
                faiss::minheap_heapify(k, D, I);
                for (idx_t j = 0; j < ntotal; j++) {
                    if (sel && !sel->is_member(j))
                        continue;
                    float s = dot_simd(xq, xb + j * d, d);
                    if (s > D[0])
                        faiss::minheap_replace_top(k, D, I, s, j);
                }
                faiss::minheap_reorder(k, D, I);
            } else {
                faiss::maxheap_heapify(k, D, I);
                for (idx_t j = 0; j < ntotal; j++) {
                    if (sel && !sel->is_member(j))
                        continue;
                    float s = l2_simd(xq, xb + j * d, d);
                    if (s < D[0])
                        faiss::maxheap_replace_top(k, D, I, s, j);
                }
                faiss::maxheap_reorder(k, D, I);
            }
        }
    }
};

/* f itself when it is not a plain IndexFlat, else a FastFlat holding its
 * vectors (f is deleted when owned, left empty otherwise). */
Index* fastify(Index* f, bool owned) {
    if (f == nullptr || !owned)
        return f;
    const std::type_info& t = typeid(*f);
    if (t != typeid(faiss::IndexFlat) && t != typeid(faiss::IndexFlatIP) &&
        t != typeid(faiss::IndexFlatL2))
        return f;
    auto* flat = static_cast<faiss::IndexFlat*>(f);
    Index* fast = new FastFlat(flat);
    delete flat;
    return fast;
}

Index* accelerate(Index* index);

/* accelerate() for a sub-index that may not be owned by its parent. */
Index* accelerate_owned(Index* index, bool owned) {
    if (dynamic_cast<faiss::IndexFlat*>(index) != nullptr)
        return fastify(index, owned);
    return accelerate(index);
}

/* Swaps the flat stores inside index (see the header comment); returns
 * the index to use in its place (a top-level Flat is itself replaced). */
Index* accelerate(Index* index) {
    if (auto* m = dynamic_cast<IndexIDMap*>(index)) {
        m->index = accelerate_owned(m->index, m->own_fields);
        return index;
    }
    if (auto* h = dynamic_cast<faiss::IndexHNSW*>(index)) {
        h->storage = fastify(h->storage, h->own_fields);
        return index;
    }
    if (auto* ivf = dynamic_cast<IndexIVF*>(index)) {
        ivf->quantizer = fastify(ivf->quantizer, ivf->own_fields);
        return index;
    }
    return fastify(index, true);
}



/* ---- HNSW search, one query at a time, with per-thread buffers -------
 *
 * 1.7.3's IndexHNSW::search allocates a VisitedTable of ntotal bytes for
 * every call (200 KB at 200,000 vectors, 1 MB at a million), opens an
 * OpenMP region even for one query, and needs the efSearch gate above.
 * Served searches come one query per call, many threads at once, so the
 * allocation was paid per query: glibc handed the pages back to the kernel
 * on free and faulted them in again on the next search.  This runs the
 * same walk over the same graph for one query: greedy descent through the
 * upper levels, then the bounded best-first search on level 0 with
 * upstream's (>= 1.7.4) queue size max(efSearch, k) and its stopping rule,
 * the per-call efSearch read from the parameters, so nothing on the index
 * is written and no gate is needed.  Its VisitedTable and candidate queue
 * belong to the calling thread and are reused (the table grows to the
 * largest index the thread has searched).  The answers are FAISS's own:
 * test_index checks one-query calls against FAISS's batch search. */

struct HNSWScratch {
    faiss::VisitedTable visited{0};
    faiss::HNSW::MinimaxHeap candidates{0};
};

thread_local HNSWScratch hnsw_scratch;

using storage_idx_t = faiss::HNSW::storage_idx_t;

/* Distances to the query, smaller is better: FAISS's HNSW orders by
 * distance, so inner products are negated (as its own search does). */
struct HNSWQueryDistance {
    faiss::DistanceComputer* dc;
    bool negate;
    float operator()(storage_idx_t i) {
        float v = (*dc)(i);
        return negate ? -v : v;
    }
};

/* Moves nearest to the closest vertex reachable on level by steps that
 * each get closer to the query. */
void hnsw_greedy_descent(
        const faiss::HNSW& hnsw,
        HNSWQueryDistance& dis,
        int level,
        storage_idx_t hidden,
        storage_idx_t& nearest,
        float& d_nearest) {
    for (;;) {
        storage_idx_t from = nearest;
        size_t begin, end;
        hnsw.neighbor_range(from, level, &begin, &end);
        for (size_t j = begin; j < end; j++) {
            storage_idx_t v = hnsw.neighbors[j];
            if (v < 0)
                break;
            if (v == hidden)
                continue;
            float d = dis(v);
            if (d < d_nearest) {
                nearest = v;
                d_nearest = d;
            }
        }
        if (nearest == from)
            return;
    }
}

/* Level 0: best-first from the candidates' seed, keeping the k best
 * selected vertices in the max-heap (D, I). */
void hnsw_search_level0(
        const faiss::HNSW& hnsw,
        HNSWQueryDistance& dis,
        const SearchParametersHNSW& params,
        int k,
        storage_idx_t hidden,
        faiss::HNSW::MinimaxHeap& candidates,
        faiss::VisitedTable& visited,
        faiss::Index::idx_t* I,
        float* D) {
    const faiss::IDSelector* sel = params.sel;
    int nres = 0;
    auto offer = [&](storage_idx_t v, float d) {
        if (v == hidden || (sel && !sel->is_member(v)))
            return;
        if (nres < k)
            faiss::maxheap_push(++nres, D, I, d, (faiss::Index::idx_t)v);
        else if (d < D[0])
            faiss::maxheap_replace_top(nres, D, I, d, (faiss::Index::idx_t)v);
    };
    for (int i = 0; i < candidates.size(); i++) {
        offer(candidates.ids[i], candidates.dis[i]);
        visited.set(candidates.ids[i]);
    }
    for (int steps = 0; candidates.size() > 0;) {
        float d0 = 0;
        storage_idx_t v0 = candidates.pop_min(&d0);
        /* stop once efSearch queued candidates are closer than this one */
        if (params.check_relative_distance &&
            candidates.count_below(d0) >= params.efSearch)
            break;
        size_t begin, end;
        hnsw.neighbor_range(v0, 0, &begin, &end);
        for (size_t j = begin; j < end; j++) {
            storage_idx_t v = hnsw.neighbors[j];
            if (v < 0)
                break;
            if (visited.get(v))
                continue;
            visited.set(v);
            float d = dis(v);
            offer(v, d);
            candidates.push(v, d);
        }
        if (!params.check_relative_distance && ++steps > params.efSearch)
            break;
    }
}

/* True when hnsw_search_one serves this index: the plain walk (FAISS's
 * defaults for the upper levels and the bounded queue) over a storage
 * that gives a distance computer. */
bool hnsw_own_search_applies(const faiss::IndexHNSW& index) {
    return index.storage != nullptr && index.hnsw.upper_beam == 1 &&
            index.hnsw.search_bounded_queue &&
            index.reconstruct_from_neighbors == nullptr &&
            (index.metric_type == faiss::METRIC_INNER_PRODUCT ||
             index.metric_type == faiss::METRIC_L2);
}

/* One query x: its k best in (distances, labels), best first, as
 * IndexHNSW::search reports them (similarities for inner product). */
void hnsw_search_one(
        const faiss::IndexHNSW& index,
        const float* x,
        Index::idx_t k,
        float* distances,
        Index::idx_t* labels,
        const SearchParametersHNSW& params,
        Index::idx_t hidden_id) {
    FAISS_THROW_IF_NOT(k > 0 && k <= INT32_MAX);
    /* The hidden vertex is never offered and never expanded; only when
     * it is the entry point does the walk start from it. */
    storage_idx_t hidden =
            hidden_id >= 0 && hidden_id < index.ntotal ? hidden_id : -1;
    const faiss::HNSW& hnsw = index.hnsw;
    std::unique_ptr<faiss::DistanceComputer> dc(
            index.storage->get_distance_computer());
    HNSWQueryDistance dis{
            dc.get(), index.metric_type == faiss::METRIC_INNER_PRODUCT};
    dc->set_query(x);
    faiss::maxheap_heapify(k, distances, labels);
    if (hnsw.entry_point >= 0) {
        HNSWScratch& s = hnsw_scratch;
        if (s.visited.visited.size() < (size_t)index.ntotal)
            s.visited.visited.resize((size_t)index.ntotal);
        storage_idx_t nearest = hnsw.entry_point;
        float d_nearest = dis(nearest);
        for (int level = hnsw.max_level; level >= 1; level--)
            hnsw_greedy_descent(hnsw, dis, level, hidden, nearest, d_nearest);
        int queue = std::max(params.efSearch, (int)k);
        if (s.candidates.n != queue) {
            s.candidates.n = queue;
            s.candidates.ids.resize((size_t)queue);
            s.candidates.dis.resize((size_t)queue);
        }
        s.candidates.clear();
        s.candidates.push(nearest, d_nearest);
        if (hidden >= 0)
            s.visited.set(hidden);
        hnsw_search_level0(
                hnsw, dis, params, (int)k, hidden, s.candidates, s.visited,
                labels, distances);
        s.visited.advance();
    }
    faiss::maxheap_reorder(k, distances, labels);
    if (dis.negate)
        for (Index::idx_t i = 0; i < k; i++)
            distances[i] = -distances[i];
}

/* Runs index->search(...) with params: one query on an IndexHNSW through
 * hnsw_search_one, several through FAISS (its OpenMP loop) inside the
 * gate when params carry an efSearch. */
void search_maybe_hnsw(
        const Index* index,
        Index::idx_t n,
        const float* x,
        Index::idx_t k,
        float* distances,
        Index::idx_t* labels,
        const SearchParameters* params) {
    auto* hnsw_index = dynamic_cast<const faiss::IndexHNSW*>(index);
    auto* hp = dynamic_cast<const SearchParametersHNSW*>(params);
    if (hnsw_index == nullptr || hp == nullptr) {
        index->search(n, x, k, distances, labels, params);
        return;
    }
    auto* ex = dynamic_cast<const SearchParametersHNSWHiding*>(hp);
    if (ex && ex->scan && hnsw_index->storage != nullptr) {
        SearchParameters flat;
        flat.sel = hp->sel;
        hnsw_index->storage->search(n, x, k, distances, labels, &flat);
        return;
    }
    if (n == 1 && hnsw_own_search_applies(*hnsw_index)) {
        auto* hiding = dynamic_cast<const SearchParametersHNSWHiding*>(hp);
        hnsw_search_one(
                *hnsw_index, x, k, distances, labels, *hp,
                hiding ? hiding->hidden : -1);
        return;
    }
    auto& hnsw = const_cast<faiss::HNSW&>(hnsw_index->hnsw);
    hnsw_ef_gate.enter(hnsw, hp->efSearch);
    try {
        index->search(n, x, k, distances, labels, params);
    } catch (...) {
        hnsw_ef_gate.leave(hnsw);
        throw;
    }
    hnsw_ef_gate.leave(hnsw);
}

/* A copy of params, of the same dynamic type, whose selector is sel. */
SearchParameters* copy_params_with_sel(
        const SearchParameters* params,
        faiss::IDSelector* sel) {
    SearchParameters* copy;
    if (auto* p = dynamic_cast<const SearchParametersHNSWHiding*>(params)) {
        copy = new SearchParametersHNSWHiding(*p);
    } else if (auto* p = dynamic_cast<const SearchParametersHNSW*>(params)) {
        copy = new SearchParametersHNSW(*p);
    } else if (auto* p = dynamic_cast<const SearchParametersIVF*>(params)) {
        copy = new SearchParametersIVF(*p);
    } else if (typeid(*params) == typeid(SearchParameters)) {
        copy = new SearchParameters(*params);
    } else {
        FAISS_THROW_MSG("IndexIDMap: unsupported SearchParameters type");
    }
    copy->sel = sel;
    return copy;
}

/* IndexIDMap::search with parameters, as upstream >= 1.7.4 does it. */
void idmap_search(
        const IndexIDMap* idmap,
        Index::idx_t n,
        const float* x,
        Index::idx_t k,
        float* distances,
        Index::idx_t* labels,
        const SearchParameters* params) {
    IDSelectorTranslated translated(idmap->id_map, params->sel);
    std::unique_ptr<SearchParameters> sub(copy_params_with_sel(
            params, params->sel ? &translated : nullptr));
    if (auto* h = dynamic_cast<SearchParametersHNSWHiding*>(sub.get())) {
        /* the caller's id to the sub-index's (a linear scan: hiding is
         * for measuring, not for serving) */
        auto it = std::find(
                idmap->id_map.begin(), idmap->id_map.end(), h->hidden);
        h->hidden = it == idmap->id_map.end() ? -1 : it - idmap->id_map.begin();
    }
    search_maybe_hnsw(idmap->index, n, x, k, distances, labels, sub.get());
    for (Index::idx_t i = 0; i < n * k; i++) {
        if (labels[i] >= 0) {
            labels[i] = idmap->id_map[labels[i]];
        }
    }
}

} // namespace

extern "C" {

/* error_impl.cpp */

const char* faiss_get_last_error() {
    if (faiss_last_exception) {
        try {
            std::rethrow_exception(faiss_last_exception);
        } catch (std::exception& e) {
            return e.what();
        } catch (...) {
            return "Unknown error";
        }
    }
    return nullptr;
}

/* Index_c.cpp */

DEFINE_DESTRUCTOR(Index)
DEFINE_GETTER(Index, int, d)
DEFINE_GETTER(Index, int, is_trained)
DEFINE_GETTER(Index, idx_t, ntotal)
DEFINE_GETTER(Index, FaissMetricType, metric_type)
DEFINE_GETTER(Index, int, verbose)
DEFINE_SETTER(Index, int, verbose)

int faiss_Index_train(FaissIndex* index, idx_t n, const float* x) {
    try {
        reinterpret_cast<Index*>(index)->train(n, x);
    }
    VLM_CATCH
}

int faiss_Index_add(FaissIndex* index, idx_t n, const float* x) {
    try {
        reinterpret_cast<Index*>(index)->add(n, x);
    }
    VLM_CATCH
}

int faiss_Index_add_with_ids(
        FaissIndex* index,
        idx_t n,
        const float* x,
        const idx_t* xids) {
    try {
        reinterpret_cast<Index*>(index)->add_with_ids(n, x, xids);
    }
    VLM_CATCH
}

int faiss_Index_search(
        const FaissIndex* index,
        idx_t n,
        const float* x,
        idx_t k,
        float* distances,
        idx_t* labels) {
    try {
        reinterpret_cast<const Index*>(index)->search(
                n, x, k, distances, labels);
    }
    VLM_CATCH
}

int faiss_Index_search_with_params(
        const FaissIndex* index,
        idx_t n,
        const float* x,
        idx_t k,
        const FaissSearchParameters* params,
        float* distances,
        idx_t* labels) {
    try {
        auto* idx = reinterpret_cast<const Index*>(index);
        auto* sp = reinterpret_cast<const SearchParameters*>(params);
        auto* idmap = dynamic_cast<const IndexIDMap*>(idx);
        if (idmap && sp) {
            idmap_search(idmap, n, x, k, distances, labels, sp);
        } else {
            search_maybe_hnsw(idx, n, x, k, distances, labels, sp);
        }
    }
    VLM_CATCH
}

int faiss_Index_range_search(
        const FaissIndex* index,
        idx_t n,
        const float* x,
        float radius,
        FaissRangeSearchResult* result) {
    try {
        reinterpret_cast<const Index*>(index)->range_search(
                n, x, radius,
                reinterpret_cast<faiss::RangeSearchResult*>(result));
    }
    VLM_CATCH
}

int faiss_Index_reset(FaissIndex* index) {
    try {
        reinterpret_cast<Index*>(index)->reset();
    }
    VLM_CATCH
}

int faiss_Index_remove_ids(
        FaissIndex* index,
        const FaissIDSelector* sel,
        size_t* n_removed) {
    try {
        size_t n = reinterpret_cast<Index*>(index)->remove_ids(
                *reinterpret_cast<const faiss::IDSelector*>(sel));
        if (n_removed) {
            *n_removed = n;
        }
    }
    VLM_CATCH
}

int faiss_Index_reconstruct(const FaissIndex* index, idx_t key, float* recons) {
    try {
        reinterpret_cast<const Index*>(index)->reconstruct(key, recons);
    }
    VLM_CATCH
}

DEFINE_DESTRUCTOR(SearchParameters)

int faiss_SearchParameters_new(
        FaissSearchParameters** p_sp,
        FaissIDSelector* sel) {
    try {
        SearchParameters* sp = new SearchParameters;
        sp->sel = reinterpret_cast<faiss::IDSelector*>(sel);
        *p_sp = reinterpret_cast<FaissSearchParameters*>(sp);
    }
    VLM_CATCH
}

/* AutoTune_c.cpp */

void faiss_ParameterSpace_free(FaissParameterSpace* ps) {
    delete reinterpret_cast<faiss::ParameterSpace*>(ps);
}

int faiss_ParameterSpace_new(FaissParameterSpace** p_ps) {
    try {
        *p_ps = reinterpret_cast<FaissParameterSpace*>(
                new faiss::ParameterSpace);
    }
    VLM_CATCH
}

int faiss_ParameterSpace_set_index_parameter(
        const FaissParameterSpace* ps,
        FaissIndex* index,
        const char* name,
        double value) {
    try {
        reinterpret_cast<const faiss::ParameterSpace*>(ps)->set_index_parameter(
                reinterpret_cast<Index*>(index), name, value);
    }
    VLM_CATCH
}

/* index_factory_c.cpp */

int faiss_index_factory(
        FaissIndex** p_index,
        int d,
        const char* description,
        FaissMetricType metric) {
    try {
        *p_index = reinterpret_cast<FaissIndex*>(accelerate(faiss::index_factory(
                d, description, static_cast<faiss::MetricType>(metric))));
    }
    VLM_CATCH
}

/* index_io_c.cpp */

int faiss_write_index(const FaissIndex* idx, FILE* f) {
    try {
        faiss::write_index(reinterpret_cast<const Index*>(idx), f);
    }
    VLM_CATCH
}

int faiss_write_index_fname(const FaissIndex* idx, const char* fname) {
    try {
        faiss::write_index(reinterpret_cast<const Index*>(idx), fname);
    }
    VLM_CATCH
}

int faiss_read_index(FILE* f, int io_flags, FaissIndex** p_out) {
    try {
        *p_out = reinterpret_cast<FaissIndex*>(
                accelerate(faiss::read_index(f, io_flags)));
    }
    VLM_CATCH
}

int faiss_read_index_fname(
        const char* fname,
        int io_flags,
        FaissIndex** p_out) {
    try {
        *p_out = reinterpret_cast<FaissIndex*>(
                accelerate(faiss::read_index(fname, io_flags)));
    }
    VLM_CATCH
}

/* IndexIVF_c.cpp */

DEFINE_DESTRUCTOR(IndexIVF)
DEFINE_INDEX_DOWNCAST(IndexIVF)
DEFINE_GETTER(IndexIVF, size_t, nlist)
DEFINE_GETTER(IndexIVF, size_t, nprobe)
DEFINE_SETTER(IndexIVF, size_t, nprobe)

#define DEFINE_SEARCH_PARAMETERS_DOWNCAST(clazz)                       \
    Faiss##clazz* faiss_##clazz##_cast(FaissSearchParameters* sp) {    \
        return reinterpret_cast<Faiss##clazz*>(                        \
                dynamic_cast<faiss::clazz*>(                           \
                        reinterpret_cast<SearchParameters*>(sp)));     \
    }

DEFINE_DESTRUCTOR(SearchParametersIVF)
DEFINE_SEARCH_PARAMETERS_DOWNCAST(SearchParametersIVF)

int faiss_SearchParametersIVF_new(FaissSearchParametersIVF** p_sp) {
    try {
        *p_sp = reinterpret_cast<FaissSearchParametersIVF*>(
                new SearchParametersIVF);
    }
    VLM_CATCH
}

int faiss_SearchParametersIVF_new_with(
        FaissSearchParametersIVF** p_sp,
        FaissIDSelector* sel,
        size_t nprobe,
        size_t max_codes) {
    try {
        SearchParametersIVF* sp = new SearchParametersIVF;
        sp->sel = reinterpret_cast<faiss::IDSelector*>(sel);
        sp->nprobe = nprobe;
        sp->max_codes = max_codes;
        *p_sp = reinterpret_cast<FaissSearchParametersIVF*>(sp);
    }
    VLM_CATCH
}

DEFINE_GETTER_PERMISSIVE(SearchParametersIVF, const FaissIDSelector*, sel)
DEFINE_GETTER(SearchParametersIVF, size_t, nprobe)
DEFINE_SETTER(SearchParametersIVF, size_t, nprobe)
DEFINE_GETTER(SearchParametersIVF, size_t, max_codes)
DEFINE_SETTER(SearchParametersIVF, size_t, max_codes)

/* IndexHNSW_c.cpp */

DEFINE_DESTRUCTOR(SearchParametersHNSW)
DEFINE_SEARCH_PARAMETERS_DOWNCAST(SearchParametersHNSW)

int faiss_SearchParametersHNSW_new(FaissSearchParametersHNSW** p_sp) {
    try {
        *p_sp = reinterpret_cast<FaissSearchParametersHNSW*>(
                new SearchParametersHNSW);
    }
    VLM_CATCH
}

int faiss_SearchParametersHNSW_new_with(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel,
        int efSearch) {
    try {
        SearchParametersHNSW* sp = new SearchParametersHNSW;
        sp->sel = reinterpret_cast<faiss::IDSelector*>(sel);
        sp->efSearch = efSearch;
        *p_sp = reinterpret_cast<FaissSearchParametersHNSW*>(sp);
    }
    VLM_CATCH
}

/* vlmdb's own HNSW parameters (SearchParametersHNSWHiding). */
static int new_own_hnsw_params(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel,
        int efSearch,
        idx_t hidden_id,
        bool scan) {
    try {
        auto* sp = new SearchParametersHNSWHiding;
        sp->sel = reinterpret_cast<faiss::IDSelector*>(sel);
        sp->efSearch = efSearch;
        sp->hidden = hidden_id;
        sp->scan = scan;
        *p_sp = reinterpret_cast<FaissSearchParametersHNSW*>(
                static_cast<SearchParametersHNSW*>(sp));
    }
    VLM_CATCH
}

int vlm_faiss_SearchParametersHNSW_new_hiding(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel,
        int efSearch,
        idx_t hidden_id) {
    return new_own_hnsw_params(p_sp, sel, efSearch, hidden_id, false);
}

int vlm_faiss_SearchParametersHNSW_new_scan(
        FaissSearchParametersHNSW** p_sp,
        FaissIDSelector* sel) {
    SearchParametersHNSW defaults;
    return new_own_hnsw_params(p_sp, sel, defaults.efSearch, -1, true);
}

DEFINE_GETTER_PERMISSIVE(SearchParametersHNSW, const FaissIDSelector*, sel)
DEFINE_GETTER(SearchParametersHNSW, int, efSearch)
DEFINE_SETTER(SearchParametersHNSW, int, efSearch)

/* MetaIndexes_c.cpp */

DEFINE_INDEX_DOWNCAST(IndexIDMap)

/* impl/AuxIndexStructures_c.cpp */

DEFINE_DESTRUCTOR(IDSelector)

/* impl/AuxIndexStructures_c.cpp: RangeSearchResult */

DEFINE_DESTRUCTOR(RangeSearchResult)

int faiss_RangeSearchResult_new(FaissRangeSearchResult** p_rsr, idx_t nq) {
    try {
        *p_rsr = reinterpret_cast<FaissRangeSearchResult*>(
                new faiss::RangeSearchResult(nq));
    }
    VLM_CATCH
}

void faiss_RangeSearchResult_lims(FaissRangeSearchResult* rsr, size_t** lims) {
    *lims = reinterpret_cast<faiss::RangeSearchResult*>(rsr)->lims;
}

void faiss_RangeSearchResult_labels(
        FaissRangeSearchResult* rsr,
        idx_t** labels,
        float** distances) {
    auto* r = reinterpret_cast<faiss::RangeSearchResult*>(rsr);
    *labels = r->labels;
    *distances = r->distances;
}

int faiss_IDSelector_is_member(const FaissIDSelector* sel, idx_t id) {
    return reinterpret_cast<const faiss::IDSelector*>(sel)->is_member(id);
}

int faiss_IDSelectorRange_new(
        FaissIDSelectorRange** p_sel,
        idx_t imin,
        idx_t imax) {
    try {
        *p_sel = reinterpret_cast<FaissIDSelectorRange*>(
                new faiss::IDSelectorRange(imin, imax));
    }
    VLM_CATCH
}

int faiss_IDSelectorBatch_new(
        FaissIDSelectorBatch** p_sel,
        size_t n,
        const idx_t* indices) {
    try {
        *p_sel = reinterpret_cast<FaissIDSelectorBatch*>(
                new faiss::IDSelectorBatch(n, indices));
    }
    VLM_CATCH
}

DEFINE_DESTRUCTOR(IDSelectorBitmap)
DEFINE_GETTER(IDSelectorBitmap, size_t, n)
DEFINE_GETTER(IDSelectorBitmap, const uint8_t*, bitmap)

int faiss_IDSelectorBitmap_new(
        FaissIDSelectorBitmap** p_sel,
        size_t n,
        const uint8_t* bitmap) {
    try {
        *p_sel = reinterpret_cast<FaissIDSelectorBitmap*>(
                new faiss::IDSelectorBitmap(n, bitmap));
    }
    VLM_CATCH
}

/* utils/distances_c.cpp (bench/search.c measures FAISS's own kernels) */

void faiss_fvec_inner_products_ny(
        float* ip,
        const float* x,
        const float* y,
        size_t d,
        size_t ny) {
    faiss::fvec_inner_products_ny(ip, x, y, d, ny);
}

} // extern "C"
