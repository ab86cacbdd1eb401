# vlmdb - a vector database for image-text retrieval.
#
#   make demo      install missing packages, build, run the end-to-end demo
#   make test      install missing packages, build, run every test
#   make test T=db run one module's tests (tests/test_db.c)
#   make test-web  the web console in a real browser (chromium, puppeteer-core)
#   make test-cluster  a sharded build through a real Slurm on this machine
#   make asan      the test suite under AddressSanitizer + UBSan
#   make tsan      the concurrency tests under ThreadSanitizer
#   make crash     the kill -9 crash campaign (CRASH_KILLS=1000)
#   make coverage  line coverage per module (the tests under --coverage)
#   make fuzz      libFuzzer targets (run: make fuzz-run SECONDS=600)
#   make bench     build the benchmarks (bench/*.c -> build/bench/*)
#   make FAISS_PREFIX=/opt/faiss   link a real libfaiss_c instead of the shim

CC       ?= cc
CXX      ?= c++
BUILD    ?= build
ARCH     ?= -march=native
OPT      ?= -O2
SAN      ?=
CSTD      = -std=c11 -D_GNU_SOURCE
WARN      = -Wall -Wextra -Werror -Wno-format-truncation -Wno-error=deprecated-declarations
INCLUDES  = -Icommon -Iembed -Itrain -Iindex -Idb -Inet -Icli
PKG_CFLAGS := $(shell pkg-config --cflags jansson libutf8proc libpng libuv libwebp libwebpdemux libtiff-4 libheif 2>/dev/null)
# the image decoders beyond JPEG and PNG (giflib has no pkg-config file)
IMAGE_LIBS := $(shell pkg-config --libs libwebpdemux libwebp libtiff-4 libheif 2>/dev/null || echo -lwebpdemux -lwebp -ltiff -lheif) -lgif

ifeq ($(SAN),asan)
  SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  OPT      = -O1
else ifeq ($(SAN),tsan)
  SANFLAGS = -fsanitize=thread -fno-omit-frame-pointer
  OPT      = -O1
endif

# Coverage builds (`make coverage`): forked test children leave by _exit,
# which skips gcov's exit handler, so the test programs link with
# --wrap=_exit and tests/util's __wrap__exit writes their counts first.
ifneq ($(findstring --coverage,$(SANFLAGS)),)
  CFLAGS        += -DVLM_TEST_COVERAGE
  TEST_LDFLAGS   = -Wl,--wrap=_exit
endif

CFLAGS   += $(CSTD) $(OPT) -g $(ARCH) $(WARN) $(INCLUDES) $(PKG_CFLAGS) $(SANFLAGS) -pthread
CXXFLAGS += -std=c++17 $(OPT) -g $(ARCH) -Wall -Wextra -Iindex -Iembed $(SANFLAGS) -pthread
LDFLAGS  += $(SANFLAGS) -pthread

ifdef FAISS_PREFIX
  CFLAGS   += -I$(FAISS_PREFIX)/include -DVLM_FAISS_REAL_CAPI=1
  FAISS_LIBS = -L$(FAISS_PREFIX)/lib -Wl,-rpath,$(FAISS_PREFIX)/lib -lfaiss_c -lfaiss
  CXXFLAGS += -I$(FAISS_PREFIX)/include
  SHIM_SRC  = index/faiss_ondisk.cpp
else
  FAISS_LIBS = -lfaiss
  SHIM_SRC   = $(wildcard index/*.cpp)
endif

LIBS = -ljansson -lhttp_parser -lutf8proc -ljpeg -lpng16 $(IMAGE_LIBS) -lz -llmdb -lsqlite3 -lxxhash -luv \
       -lsentencepiece $(FAISS_LIBS) -lopenblas -lgomp -lstdc++ -lm -ldl -lrt
TEST_LIBS = -lcmocka -lhiredis

MODULES  = common embed train index db net
LIB_SRC  = $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
CLI_SRC  = $(wildcard cli/*.c)
# C++ shims compiled into the library always: embed/'s over libsentencepiece
CXX_SRC  = $(wildcard embed/*.cpp)
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(SHIM_SRC:%.cpp=$(BUILD)/obj/%.o) $(CXX_SRC:%.cpp=$(BUILD)/obj/%.o)
CLI_OBJ  = $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC = $(wildcard tests/test_*.c)
TEST_BIN = $(TEST_SRC:tests/%.c=$(BUILD)/%)
HELPER_SRC = $(wildcard tests/helpers/*.c)
HELPER_BIN = $(HELPER_SRC:tests/helpers/%.c=$(BUILD)/helpers/%)
TEST_UTIL_OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/util/*.c))
BENCH_SRC = $(wildcard bench/*.c)
BENCH_BIN = $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps build test test-web console-shots test-cluster asan tsan crash coverage fuzz fuzz-run bench demo data clean
.DEFAULT_GOAL := all

all: $(BUILD)/vlmdb

deps:
	@sh tools/deps.sh build

build: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all tests-build

tests-build: $(TEST_BIN) $(HELPER_BIN) $(BUILD)/vlmdb

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The OpenAPI document is compiled into the server (.incbin in openapi.c).
$(BUILD)/obj/net/openapi.o: net/openapi.json
# So are the web console's files (.incbin in console.c).
$(BUILD)/obj/net/console.o: net/console/index.html net/console/app.js net/console/app.css

# The trainer's elementwise kernels need the vectorizer's full cost model
# (-O2's is too cheap for loops of unknown length).
$(BUILD)/obj/train/train_kernels.o: CFLAGS += -O3

$(BUILD)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libvlm.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/vlmdb: $(CLI_OBJ) $(BUILD)/libvlm.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libvlm.a $(LIBS)

# Tests link the library and the CLI objects (but not cli/main.c's main),
# so command functions can be tested in process.
CLI_LIB_OBJ = $(filter-out $(BUILD)/obj/cli/main.o,$(CLI_OBJ))

$(BUILD)/test_%: tests/test_%.c $(BUILD)/libvlm.a $(CLI_LIB_OBJ) $(TEST_UTIL_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(TEST_UTIL_OBJ) $(CLI_LIB_OBJ) $(BUILD)/libvlm.a $(LDFLAGS) $(TEST_LDFLAGS) $(LIBS) $(TEST_LIBS)

$(BUILD)/helpers/%: tests/helpers/%.c $(BUILD)/libvlm.a $(TEST_UTIL_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(TEST_UTIL_OBJ) $(BUILD)/libvlm.a $(LDFLAGS) $(TEST_LDFLAGS) $(LIBS) $(TEST_LIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libvlm.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libvlm.a $(LDFLAGS) $(LIBS) -lhiredis

# Catalog builders for `make data` (tools/<x>.c -> $(BUILD)/tools/<x>), with
# their shared code in tools/lib/ (also linked into tests/test_data.c).
TOOL_SRC = $(wildcard tools/*.c)
TOOL_BIN = $(TOOL_SRC:tools/%.c=$(BUILD)/tools/%)
TOOL_LIB_OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/lib/*.c))
TOOL_CFLAGS := $(shell pkg-config --cflags libxml-2.0 zlib 2>/dev/null || echo -I/usr/include/libxml2)
TOOL_LIBS := $(shell pkg-config --libs libxml-2.0 zlib 2>/dev/null || echo -lxml2 -lz)

$(BUILD)/obj/tools/%.o: CFLAGS += -Itools $(TOOL_CFLAGS)

$(BUILD)/tools/%: tools/%.c tools/vlm_data.h $(TOOL_LIB_OBJ) $(BUILD)/obj/common/vlm_error.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itools $(TOOL_CFLAGS) -o $@ $< $(TOOL_LIB_OBJ) $(BUILD)/obj/common/vlm_error.o $(LDFLAGS) $(TOOL_LIBS) $(LIBS)

# The builders need only the error list from the library; test_data runs
# the built programs too.
$(BUILD)/test_data: tests/test_data.c tools/vlm_data.h $(TOOL_LIB_OBJ) $(BUILD)/obj/common/vlm_error.o | $(TOOL_BIN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -Itools -o $@ $< $(TOOL_LIB_OBJ) $(BUILD)/obj/common/vlm_error.o $(LDFLAGS) $(TOOL_LIBS) $(LIBS) $(TEST_LIBS)

# Run the suite (or one module with T=name).  Each test binary prints
# cmocka's summary; the last lines sum them up.
test: build
	@BUILD=$(BUILD) bash tools/run-tests.sh $(if $(T),$(BUILD)/test_$(T),$(TEST_BIN))

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=asan test

# The web console in a real browser (tests/web/console.test.mjs): Debian's
# chromium driven headless by puppeteer-core, which npm installs from
# tests/web/package-lock.json when it is absent (it downloads no browser).
# Screenshots of each state go to $(BUILD)/web/.
WEB_DEPS = tests/web/node_modules/.package-lock.json
$(WEB_DEPS): tests/web/package.json tests/web/package-lock.json
	cd tests/web && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund
	@touch $@

test-web: deps
	@$(MAKE) --no-print-directory -j$$(nproc) $(BUILD)/vlmdb $(WEB_DEPS)
	node tests/web/console.test.mjs --vlmdb $(BUILD)/vlmdb --out $(BUILD)/web

# The README's two screenshots of the console (docs/console-*.png) on the
# demo database (make demo builds it).
DEMO_DB ?= data/demo.vlmdb
console-shots: deps
	@$(MAKE) --no-print-directory -j$$(nproc) $(BUILD)/vlmdb $(WEB_DEPS)
	node tests/web/console.test.mjs --vlmdb $(BUILD)/vlmdb --shots docs --db $(DEMO_DB)
# A sharded build through a real Slurm on this machine (about 15 s):
# munged, slurmctld and two slurmd nodes started in a temporary directory
# (tools/slurm/test-cluster.sh), the shard array and the merge submitted
# with tools/slurm/submit.sh, the result checked against one process.
test-cluster:
	@sh tools/deps.sh cluster
	@$(MAKE) --no-print-directory $(BUILD)/vlmdb
	@bash tools/slurm/test-cluster.sh $(BUILD)/vlmdb

# The long crash campaign: the kill -9 tests of `make test` run longer.
# CRASH_KILLS kills of a writer child (ingest, upsert, delete, index
# checkpoints and reindexing; every acknowledged item checked exactly after
# each kill), then SERVER_KILLS kills of `vlmdb serve` under four writing
# clients and SAVE (every acknowledged write checked after each restart).
CRASH_KILLS ?= 1000
SERVER_KILLS ?= 250
crash: build
	@VLM_CRASH_KILLS=$(CRASH_KILLS) VLM_TEST_ONLY=crash_kill9 $(BUILD)/test_db
	@VLM_SERVER_KILLS=$(SERVER_KILLS) NET_TEST=test_kill9_under_load $(BUILD)/test_net

# Line coverage per module: the test suite built with --coverage (-O0)
# into build-cov, then tools/coverage.sh sums gcov's counts per module.
coverage: deps
	@$(MAKE) --no-print-directory BUILD=build-cov OPT=-O0 SANFLAGS=--coverage test; \
	  rc=$$?; BUILD=build-cov sh tools/coverage.sh $(MODULES) cli; exit $$rc

# ThreadSanitizer over the tests that exercise concurrency.  OpenMP is
# kept to one thread: libgomp is not instrumented, so TSan cannot see the
# barriers inside FAISS's parallel loops and would report false races.
TSAN_TESTS ?= db net embed
tsan: deps
	@$(MAKE) --no-print-directory BUILD=build-tsan SAN=tsan -j$$(nproc) \
	  $(TSAN_TESTS:%=build-tsan/test_%) build-tsan/vlmdb
	@BUILD=build-tsan VLM_TSAN=1 OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  bash tools/run-tests.sh $(TSAN_TESTS:%=build-tsan/test_%)

# libFuzzer targets: tests/fuzz/fuzz_*.c, built with clang.
FUZZ_SRC = $(wildcard tests/fuzz/fuzz_*.c)
fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang CXX=clang++ SAN=fuzz \
	  SANFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer" \
	  WARN="$(WARN) -Wno-unknown-warning-option" \
	  OPT=-O1 $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/fuzz/%)

# (the library holds C++ shims: link the C++ runtime's sanitizers)
build-fuzz/fuzz/%: tests/fuzz/%.c build-fuzz/libvlm.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -fsanitize-link-c++-runtime -Itests -o $@ $< build-fuzz/libvlm.a $(LDFLAGS) $(LIBS)

# the catalog readers live in cli/: link them too
build-fuzz/fuzz/fuzz_catalog: tests/fuzz/fuzz_catalog.c build-fuzz/libvlm.a $(CLI_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -fsanitize-link-c++-runtime -Itests -o $@ $< $(CLI_LIB_OBJ) build-fuzz/libvlm.a $(LDFLAGS) $(LIBS)

# the write path reaches FAISS (C++): link the C++ runtime's sanitizers
build-fuzz/fuzz/fuzz_put: tests/fuzz/fuzz_put.c build-fuzz/libvlm.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -fsanitize-link-c++-runtime -Itests -o $@ $< build-fuzz/libvlm.a $(LDFLAGS) $(LIBS)

SECONDS ?= 60
fuzz-run: fuzz
	@for f in $(FUZZ_SRC:tests/fuzz/%.c=%); do \
	  mkdir -p build-fuzz/corpus/$$f; \
	  echo "== $$f ($(SECONDS)s)"; \
	  build-fuzz/fuzz/$$f -max_total_time=$(SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build-fuzz/ build-fuzz/corpus/$$f tests/fuzz/corpus/$$f || exit 1; \
	done

bench: deps
	@$(MAKE) --no-print-directory -j$$(nproc) $(BENCH_BIN)

data: deps
	@sh tools/deps.sh data
	@$(MAKE) --no-print-directory -j$$(nproc) all $(TOOL_BIN)
	@BUILD=$(BUILD) sh tools/make-data.sh

demo: build
	@sh tools/deps.sh data
	@$(MAKE) --no-print-directory $(TOOL_BIN)
	@BUILD=$(BUILD) sh tools/demo.sh

clean:
	rm -rf build build-asan build-tsan build-fuzz build-cov

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
