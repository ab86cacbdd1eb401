/* faiss_ondisk.cpp - IVF inverted lists in one memory-mapped file: the
 * merge of many IVF parts into FAISS's OnDiskInvertedLists, and mapping
 * such a file read-only at load time (see faiss_c_ext.h, "vlmdb
 * extensions").
 *
 * FAISS's C API has neither (upstream's c_api stops at read_index with
 * io_flags, and its FAISS_IO_FLAG_MMAP is 1, which C++'s read_index takes
 * as nothing at all: the lists are read into RAM).  What Debian's FAISS
 * 1.7.3 has in C++, and what this file uses:
 *
 * - OnDiskInvertedLists(nlist, code_size, filename) and its merge_from(ils,
 *   n): sizes every list from the parts, truncates the file to the total,
 *   maps it and copies each part's codes and ids in, list by list (an
 *   OpenMP loop over lists).  merge_from_multiple is >= 1.7.4 only.
 * - IndexIVF::replace_invlists(il, own): swaps the lists in; ntotal is the
 *   caller's to set (merge_from does not know about the index).
 * - read_index with IO_FLAG_SKIP_IVF_DATA: reads an "ilod" lists header
 *   (sizes, offsets, file name, total size) without mapping the file, so
 *   the shim maps it itself: from the index file's directory (what
 *   IO_FLAG_ONDISK_SAME_DIR does, but that flag needs a FileIOReader with a
 *   name, which the checksumming stream of index.c is not, and it printf()s
 *   to stdout), and read-only (IO_FLAG_READ_ONLY: PROT_READ), so a stray
 *   write faults instead of changing the file.
 *
 * This file compiles against FAISS's C++ headers only, so it is linked in
 * both configurations (Debian's libfaiss.a with the C API shim, or a real
 * libfaiss_c with FAISS_PREFIX).
 */
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/FaissException.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/invlists/OnDiskInvertedLists.h>

#include <sys/mman.h>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1; glibc 2.36's headers lack it */
#endif
#include <sys/stat.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "faiss_c_ext.h"

using faiss::IndexIVF;
using idx_t = faiss::Index::idx_t;

namespace {

thread_local std::string ondisk_error;

/* Ids in lists mapped from a file (IO_FLAG_MMAP, or a list file whose
 * code size is not a multiple of 8) need not be 8-byte aligned. */
inline idx_t id_at(const idx_t* ids, size_t j) {
    idx_t id;
    memcpy(&id, reinterpret_cast<const char*>(ids) + j * sizeof(idx_t),
           sizeof id);
    return id;
}

int fail(const char* what) {
    ondisk_error = what;
    return -1;
}

#define ONDISK_CATCH                                   \
    catch (std::exception & e) {                       \
        return fail(e.what());                         \
    }                                                  \
    catch (...) {                                      \
        return fail("unknown FAISS error");            \
    }                                                  \
    return 0;

/* A part's lists with every id moved up by offset (merge_from copies ids
 * as it finds them; the parts hold each shard's own ids). */
struct OffsetLists : faiss::ReadOnlyInvertedLists {
    const faiss::InvertedLists* il;
    idx_t offset;

    OffsetLists(const faiss::InvertedLists* il_in, idx_t offset_in)
            : faiss::ReadOnlyInvertedLists(il_in->nlist, il_in->code_size),
              il(il_in),
              offset(offset_in) {}

    size_t list_size(size_t list_no) const override {
        return il->list_size(list_no);
    }
    const uint8_t* get_codes(size_t list_no) const override {
        return il->get_codes(list_no);
    }
    void release_codes(size_t list_no, const uint8_t* codes) const override {
        il->release_codes(list_no, codes);
    }
    const idx_t* get_ids(size_t list_no) const override {
        size_t n = il->list_size(list_no);
        const idx_t* src = il->get_ids(list_no);
        idx_t* out = new idx_t[n > 0 ? n : 1];
        for (size_t i = 0; i < n; i++)
            out[i] = id_at(src, i) + offset;
        il->release_ids(list_no, src);
        return out;
    }
    void release_ids(size_t, const idx_t* ids) const override {
        delete[] ids;
    }
};

const IndexIVF* as_ivf(const FaissIndex* index) {
    return dynamic_cast<const IndexIVF*>(
            reinterpret_cast<const faiss::Index*>(index));
}

/* Same coarse quantizer and code book: the parts' codes mean the same
 * thing in into.  Kinds whose training we cannot compare are refused. */
std::string same_training(const IndexIVF* a, const IndexIVF* b) {
    if (a->d != b->d || a->metric_type != b->metric_type ||
        a->nlist != b->nlist || a->code_size != b->code_size)
        return "dimension, metric, nlist or code size differ";
    auto* qa = dynamic_cast<const faiss::IndexFlat*>(a->quantizer);
    auto* qb = dynamic_cast<const faiss::IndexFlat*>(b->quantizer);
    if (!qa || !qb)
        return "the coarse quantizer is not a flat index";
    if (qa->codes != qb->codes)
        return "trained on different centroids (not copies of one trained "
               "index)";
    auto* pa = dynamic_cast<const faiss::IndexIVFPQ*>(a);
    auto* pb = dynamic_cast<const faiss::IndexIVFPQ*>(b);
    if (pa || pb) {
        if (!pa || !pb || pa->pq.centroids != pb->pq.centroids ||
            pa->by_residual != pb->by_residual)
            return "PQ code books differ";
        return "";
    }
    auto* sa = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(a);
    auto* sb = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(b);
    if (sa || sb) {
        if (!sa || !sb || sa->sq.trained != sb->sq.trained ||
            sa->sq.qtype != sb->sq.qtype ||
            sa->by_residual != sb->by_residual)
            return "scalar quantizers differ";
        return "";
    }
    if (typeid(*a) != typeid(faiss::IndexIVFFlat) ||
        typeid(*b) != typeid(faiss::IndexIVFFlat))
        return "an IVF kind whose training cannot be compared";
    return "";
}

/* Every list of od inside its mapped size (what FAISS never checks: a
 * size field changed in the file would send a search past the mapping).
 * "" or why not. */
std::string lists_outside(const faiss::OnDiskInvertedLists* od) {
    size_t entry = sizeof(idx_t) + od->code_size;
    for (size_t l = 0; l < od->nlist; l++) {
        const auto& li = od->lists[l];
        if (li.size > li.capacity || li.offset > od->totsize ||
            li.capacity > (od->totsize - li.offset) / entry)
            return "list " + std::to_string(l) + " lies outside the " +
                    std::to_string(od->totsize) + "-byte mapping";
    }
    return "";
}

/* OnDiskInvertedLists::update_totsize printf()s "resizing FILE to N
 * bytes" to stdout, where vlmdb writes its --json summaries: point
 * stdout at /dev/null for the merge. */
struct QuietStdout {
    int saved = -1;
    QuietStdout() {
        fflush(stdout);
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null < 0)
            return;
        saved = dup(STDOUT_FILENO);
        if (saved >= 0)
            dup2(null, STDOUT_FILENO);
        close(null);
    }
    ~QuietStdout() {
        if (saved < 0)
            return;
        fflush(stdout);
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
};

/* Transparent huge pages for a large index's vectors and graph.  A graph
 * search touches a few thousand vectors spread over the whole array, each
 * a TLB miss with 4 KiB pages: with 2 MiB pages HNSW searches ran 13-21%
 * faster here.  The 2 MiB-aligned middle of each array is marked
 * MADV_HUGEPAGE at once, then collapsed (MADV_COLLAPSE, Linux 6.1) on a
 * thread of its own: that copies the memory (about 0.5 s per 200 MB) and
 * searches need not wait for it.  It never changes the memory's contents,
 * so an index freed meanwhile only makes madvise fail.  Best effort:
 * older kernels and THP "never" leave the pages as they are. */
using Range = std::pair<uintptr_t, uintptr_t>;

void huge_range(const void* p, size_t bytes, std::vector<Range>& out) {
    const uintptr_t huge = 2u << 20;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t b = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (p && b > a && madvise((void*)a, b - a, MADV_HUGEPAGE) == 0)
        out.emplace_back(a, b);
}

void index_huge_ranges(const faiss::Index* index, std::vector<Range>& out) {
    if (auto* map = dynamic_cast<const faiss::IndexIDMap*>(index)) {
        index_huge_ranges(map->index, out);
        return;
    }
    if (auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(index)) {
        index_huge_ranges(hnsw->storage, out);
        const auto& nb = hnsw->hnsw.neighbors;
        huge_range(nb.data(), nb.size() * sizeof(nb[0]), out);
        return;
    }
    if (auto* flat = dynamic_cast<const faiss::IndexFlatCodes*>(index))
        huge_range(flat->codes.data(), flat->codes.size(), out);
}

void* collapse_main(void* arg) {
    auto* ranges = static_cast<std::vector<Range>*>(arg);
    for (const Range& r : *ranges)
        (void)madvise((void*)r.first, r.second - r.first, MADV_COLLAPSE);
    delete ranges;
    return nullptr;
}

} // namespace

extern "C" {

int vlm_faiss_hugepages(const FaissIndex* index) {
    static const size_t min_bytes = 64u << 20;
    try {
        auto* idx = reinterpret_cast<const faiss::Index*>(index);
        if (!idx || (size_t)idx->ntotal * (size_t)idx->d * 4 < min_bytes)
            return 0;
        auto* ranges = new std::vector<Range>();
        index_huge_ranges(idx, *ranges);
        pthread_attr_t attr;
        pthread_t t;
        if (ranges->empty() || pthread_attr_init(&attr) != 0) {
            delete ranges;
            return 0;
        }
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, collapse_main, ranges) != 0)
            delete ranges;
        pthread_attr_destroy(&attr);
        return 0;
    } catch (const std::exception& e) {
        return fail(e.what());
    }
}

const char* vlm_faiss_ondisk_last_error(void) {
    return ondisk_error.c_str();
}

int vlm_faiss_flat_reserve(FaissIndex* index, int64_t n) {
    auto* ix = reinterpret_cast<faiss::Index*>(index);
    if (auto* map = dynamic_cast<faiss::IndexIDMap*>(ix)) {
        ix = map->index;
        try {
            map->id_map.reserve(map->id_map.size() + (size_t)n);
        } catch (const std::exception& e) {
            ondisk_error = e.what();
            return -1;
        }
    }
    auto* flat = dynamic_cast<faiss::IndexFlatCodes*>(ix);
    if (!flat || n <= 0)
        return 0;
    try {
        flat->codes.reserve((size_t)(flat->ntotal + n) * flat->code_size);
    } catch (const std::exception& e) {
        ondisk_error = e.what();
        return -1;
    }
    return 0;
}

int vlm_faiss_ivf_is_ondisk(const FaissIndex* index) {
    const IndexIVF* ivf = as_ivf(index);
    auto* od = ivf ? dynamic_cast<const faiss::OnDiskInvertedLists*>(
                             ivf->invlists)
                   : nullptr;
    if (!od)
        return 0;
    /* IO_FLAG_MMAP maps an ordinary index file's lists in place: an
     * OnDiskInvertedLists without a file name of its own */
    return od->filename.empty() ? 2 : 1;
}

int vlm_faiss_ivf_merge_ondisk(
        FaissIndex* into,
        const FaissIndex* const* parts,
        const int64_t* id_offsets,
        int nparts,
        const char* ivfdata_path) {
    try {
        auto* ivf = const_cast<IndexIVF*>(as_ivf(into));
        if (!ivf)
            return fail("the merged index is not an IVF index");
        if (!ivf->is_trained || ivf->ntotal != 0)
            return fail("the index to merge into must be trained and empty");
        if (nparts < 1)
            return fail("no parts to merge");
        std::vector<std::unique_ptr<OffsetLists>> lists;
        std::vector<const faiss::InvertedLists*> ils;
        size_t total = 0;
        for (int i = 0; i < nparts; i++) {
            const IndexIVF* part = as_ivf(parts[i]);
            if (!part)
                return fail(("part " + std::to_string(i) +
                             " is not an IVF index").c_str());
            std::string why = same_training(ivf, part);
            if (!why.empty())
                return fail(("part " + std::to_string(i) + ": " + why)
                                    .c_str());
            if (id_offsets[i] < 0)
                return fail("negative id offset");
            for (size_t l = 0; l < part->nlist; l++) {
                size_t n = part->invlists->list_size(l);
                if (n == 0)
                    continue;
                faiss::InvertedLists::ScopedIds ids(part->invlists, l);
                for (size_t j = 0; j < n; j++)
                    if (id_at(ids.get(), j) < 0 ||
                        id_at(ids.get(), j) >
                                std::numeric_limits<idx_t>::max() -
                                        id_offsets[i])
                        return fail(("part " + std::to_string(i) +
                                     ": an id overflows with its offset")
                                            .c_str());
            }
            total += part->invlists->compute_ntotal();
            lists.emplace_back(new OffsetLists(part->invlists, id_offsets[i]));
            ils.push_back(lists.back().get());
        }
        /* OnDiskInvertedLists truncates and rewrites an existing file
         * in place (fopen "w"): a database that adopted a merge made to
         * this name holds a hard link to that file, so the merge gets a
         * file of its own instead. */
        if (unlink(ivfdata_path) != 0 && errno != ENOENT)
            return fail((std::string(ivfdata_path) + ": " + strerror(errno))
                                .c_str());
        std::unique_ptr<faiss::OnDiskInvertedLists> od(
                new faiss::OnDiskInvertedLists(
                        ivf->nlist, ivf->code_size, ivfdata_path));
        size_t merged;
        {
            QuietStdout quiet;
            merged = od->merge_from(ils.data(), (int)ils.size());
        }
        if (merged != total)
            return fail("merge_from lost entries");
        /* The lists reach the disk before any index file names them. */
        if (od->ptr && od->totsize > 0 &&
            msync(od->ptr, od->totsize, MS_SYNC) != 0)
            return fail(("msync " + od->filename + ": " + strerror(errno))
                                .c_str());
        int fd = open(ivfdata_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return fail((std::string(ivfdata_path) + ": " + strerror(e))
                                .c_str());
        }
        close(fd);
        ivf->replace_invlists(od.release(), true);
        /* replace_invlists leaves ntotal alone; an IVF kind is vlmdb's
         * top-level index (no IDMap or other wrapper above it). */
        ivf->ntotal = (idx_t)total;
    }
    ONDISK_CATCH
}

int vlm_faiss_ivf_map_ondisk(
        FaissIndex* index,
        const char* dir,
        uint64_t* file_bytes) {
    try {
        auto* ivf = const_cast<IndexIVF*>(as_ivf(index));
        auto* od = ivf ? dynamic_cast<faiss::OnDiskInvertedLists*>(
                                 ivf->invlists)
                       : nullptr;
        if (!od)
            return fail("not an index with on-disk inverted lists");
        if (od->ptr != nullptr)
            return fail("the inverted lists are already mapped");
        std::string name = od->filename;
        size_t slash = name.find_last_of('/');
        if (slash != std::string::npos)
            name = name.substr(slash + 1);
        if (name.empty() || name == "." || name == "..")
            return fail("the index names no inverted-list file");
        od->filename = std::string(dir) + "/" + name;
        struct stat st;
        if (stat(od->filename.c_str(), &st) != 0)
            return fail((od->filename + ": " + strerror(errno)).c_str());
        if ((uint64_t)st.st_size < od->totsize)
            return fail((od->filename + ": " + std::to_string(st.st_size) +
                         " bytes, the index needs " +
                         std::to_string(od->totsize))
                                .c_str());
        std::string outside = lists_outside(od);
        if (!outside.empty())
            return fail((od->filename + ": " + outside).c_str());
        if (file_bytes)
            *file_bytes = (uint64_t)st.st_size;
        od->read_only = true;
        /* Searches run concurrently; the prefetch threads share one
         * queue per index, so none (the page cache does the rest). */
        od->prefetch_nthread = 0;
        if (od->totsize > 0)
            od->do_mmap();
    }
    ONDISK_CATCH
}

int vlm_faiss_ivf_ids_outside(
        const FaissIndex* index,
        const uint8_t* bitmap,
        int64_t nbits,
        int64_t* outside,
        int64_t* first) {
    try {
        const IndexIVF* ivf = as_ivf(index);
        if (!ivf)
            return fail("not an IVF index");
        std::vector<uint8_t> seen((size_t)(nbits + 7) / 8, 0);
        *outside = 0;
        *first = -1;
        for (size_t l = 0; l < ivf->nlist; l++) {
            size_t n = ivf->invlists->list_size(l);
            if (n == 0)
                continue;
            faiss::InvertedLists::ScopedIds ids(ivf->invlists, l);
            for (size_t j = 0; j < n; j++) {
                idx_t id = id_at(ids.get(), j);
                bool ok = id >= 0 && id < nbits &&
                        ((bitmap[id >> 3] >> (id & 7)) & 1) &&
                        !((seen[id >> 3] >> (id & 7)) & 1);
                if (ok) {
                    seen[id >> 3] |= (uint8_t)(1u << (id & 7));
                } else {
                    if (*outside == 0)
                        *first = id;
                    (*outside)++;
                }
            }
        }
    }
    ONDISK_CATCH
}

int vlm_faiss_ivf_check_mapped(const FaissIndex* index) {
    const IndexIVF* ivf = as_ivf(index);
    auto* od = ivf ? dynamic_cast<const faiss::OnDiskInvertedLists*>(
                             ivf->invlists)
                   : nullptr;
    if (!od)
        return 0;
    std::string outside = lists_outside(od);
    return outside.empty() ? 0 : fail(outside.c_str());
}

const char* vlm_faiss_ivf_ondisk_filename(const FaissIndex* index) {
    const IndexIVF* ivf = as_ivf(index);
    auto* od = ivf ? dynamic_cast<const faiss::OnDiskInvertedLists*>(
                             ivf->invlists)
                   : nullptr;
    return od ? od->filename.c_str() : "";
}

int vlm_faiss_ivf_set_ondisk_filename(FaissIndex* index, const char* path) {
    try {
        auto* ivf = const_cast<IndexIVF*>(as_ivf(index));
        auto* od = ivf ? dynamic_cast<faiss::OnDiskInvertedLists*>(
                                 ivf->invlists)
                       : nullptr;
        if (!od || od->filename.empty())
            return fail("not an index with a list file");
        od->filename = path;
    }
    ONDISK_CATCH
}

} // extern "C"
