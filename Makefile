# forkpool: `make` builds build/forkpoold and build/forkpool-worker;
# `make run` serves the API on 127.0.0.1:8080; `make test` runs every test;
# `make check` runs them again under ASan+UBSan (in build/check);
# `make examples` builds the example plugin and tasks files into $(BUILD)/examples;
# `make install` puts the programs and include/forkpool.h under PREFIX;
# `make fuzz` runs the request validator under libFuzzer (needs clang).

BUILD   ?= build
CC      ?= cc
PKGS     = libmicrohttpd jansson sqlite3
DEB_PKGS = libmicrohttpd-dev libjansson-dev libsqlite3-dev libcurl4-openssl-dev pkg-config

WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
           -Wno-format-nonliteral
# CFLAGS is the user's (make CFLAGS=-O0 keeps working); what the build needs
# is in FP_CFLAGS, so a command-line CFLAGS cannot drop it.
CFLAGS  ?= -O2 -g
FP_CFLAGS = -std=gnu11 $(WARN) -D_GNU_SOURCE -Icommon -Iserver -Iworker -Iinclude $(SAN)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDFLAGS += $(SAN)

COMMON_SRC = $(wildcard common/*.c)
SERVER_SRC = $(filter-out server/main.c,$(wildcard server/*.c))
WORKER_SRC = $(filter-out worker/main.c,$(wildcard worker/*.c))
TEST_SRC   = $(wildcard tests/*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

SERVER = $(BUILD)/forkpoold
WORKER = $(BUILD)/forkpool-worker
TESTS  = $(BUILD)/forkpool-tests
BENCH  = $(BUILD)/forkpool-bench

.PHONY: all deps run test check clean examples install bench fuzz
all: $(SERVER) $(WORKER)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FP_CFLAGS) $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

# The sieve behind count_primes is a four-instruction store loop whose speed
# depends on where the linker happens to put it: across a 64-byte boundary
# it ran at two thirds of its speed (W4: 5.5 s or 8.6 s for the same
# ranges, after a change elsewhere in the worker moved it by 16 bytes).
# Loops aligned to 32 bytes never straddle one. Also for the bench's copy.
$(BUILD)/obj/worker/tasks.o: FP_CFLAGS += -falign-loops=32

# The schema files are embedded in the server with .incbin.
$(BUILD)/obj/server/schema.o: $(wildcard schema/*.sql)

$(SERVER): $(call obj,server/main.c $(SERVER_SRC) $(COMMON_SRC))
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(WORKER): $(call obj,worker/main.c $(WORKER_SRC) $(COMMON_SRC))
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs jansson 2>/dev/null) -lm

$(TESTS): $(call obj,$(TEST_SRC) $(SERVER_SRC) $(WORKER_SRC) $(COMMON_SRC))
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(shell pkg-config --libs libcurl 2>/dev/null) -lm

# The benchmark (bench/): links the workers' task code for W4 and embeds
# bench/executor.py, the ProcessPoolExecutor baseline.
$(BENCH): $(call obj,$(wildcard bench/*.c) worker/tasks.c $(COMMON_SRC))
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs jansson libcurl 2>/dev/null) -lm
$(BUILD)/obj/bench/executor.o: bench/executor.py

# Runs every workload against the real server and Python's executor, and
# writes the table into docs/benchmarks.md. make bench BENCH_SCALE=0.1 is
# a tenth of the sizes; forkpool-bench --help lists the other knobs.
bench: deps
	@if [ ! -x /usr/bin/python3 ] && ! command -v python3 >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q python3 >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q python3 >/dev/null; }; \
	  else echo "make bench: no python3 for the executor's side; run: sudo apt-get install -y python3"; fi; \
	fi
	@$(MAKE) --no-print-directory all $(BENCH)
	$(if $(BENCH_SCALE),BENCH_SCALE=$(BENCH_SCALE)) ./$(BENCH) --server $(SERVER) --out docs/benchmarks.md

# Plugins are built the way docs/plugins.md tells users to build theirs.
EXAMPLES     = $(patsubst %.c,$(BUILD)/%.so,$(wildcard examples/*.c)) \
               $(addprefix $(BUILD)/,$(filter-out %.c,$(wildcard examples/*)))
TEST_PLUGINS = $(patsubst tests/plugins/%.c,$(BUILD)/test-plugins/%.so,$(wildcard tests/plugins/*.c))
PLUGIN_BUILD = $(CC) $(CFLAGS) $(FP_CFLAGS) $(PKG_CFLAGS) -fPIC -shared -o $@ $< $(LDFLAGS) \
               $(shell pkg-config --libs jansson 2>/dev/null)

examples: $(EXAMPLES)

$(BUILD)/examples/%.so: examples/%.c include/forkpool.h
	@mkdir -p $(dir $@)
	$(PLUGIN_BUILD)

# The tasks files and their programs, beside the plugin (cwd defaults to a
# tasks file's directory).
$(BUILD)/examples/%: examples/%
	@mkdir -p $(dir $@)
	cp -p $< $@

$(BUILD)/test-plugins/%.so: tests/plugins/%.c include/forkpool.h
	@mkdir -p $(dir $@)
	$(PLUGIN_BUILD)

PREFIX ?= /usr/local
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/doc/forkpool
	install -m 755 $(SERVER) $(WORKER) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 include/forkpool.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 docs/plugins.md $(DESTDIR)$(PREFIX)/share/doc/forkpool/

# Installs the Debian packages the build needs, when they are missing.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make deps: installing$$missing"; \
	    apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; } || exit 1; \
	  else \
	    echo "make deps: missing packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

run: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p data
	./$(SERVER) --listen 127.0.0.1:8080 --db ./data/forkpool.db

test: deps
	@$(MAKE) --no-print-directory all $(TESTS) $(BENCH) examples $(TEST_PLUGINS)
	FORKPOOL_BIN_DIR=$(BUILD) ./$(TESTS) $(T)

check: deps
	@$(MAKE) --no-print-directory BUILD=build/check CFLAGS="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" test

# make fuzz: the request validator (server/request.c) under libFuzzer and
# ASan+UBSan, for FUZZ_TIME seconds (default 60), then the checker of
# programs' JSON output (common/jsontext.c) against jansson for as long. It
# needs clang (Debian: apt-get install clang); make test does not. Inputs that
# crash the request target are written to fuzz/regressions/, which make test
# replays through the normal build (tests/test_hostile.c): keep them with the
# fix; the jsontext target's go to build/fuzz/ (add the case to
# tests/test_jsontext.c). New corpus entries stay in build/fuzz/; fuzz/corpus
# holds the seeds of both.
FUZZ_TIME ?= 60
FUZZ_CC    = clang -O1 -g -std=gnu11 $(WARN) -D_GNU_SOURCE -Icommon -Iserver -Iworker -Iinclude \
	     $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_SRC   = fuzz/fuzz_request.c server/request.c server/catalog.c server/log.c $(COMMON_SRC)
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang: sudo apt-get install -y clang"; exit 1; }
	@$(MAKE) --no-print-directory $(WORKER)
	@mkdir -p build/fuzz/corpus build/fuzz/jsontext-corpus
	$(FUZZ_CC) -o build/fuzz/fuzz-request $(FUZZ_SRC) $(shell pkg-config --libs jansson 2>/dev/null) -lm
	FORKPOOL_WORKER=$(WORKER) build/fuzz/fuzz-request -max_total_time=$(FUZZ_TIME) -timeout=10 \
	  -rss_limit_mb=2048 -max_len=65536 -dict=fuzz/request.dict -artifact_prefix=fuzz/regressions/ \
	  build/fuzz/corpus fuzz/corpus
	$(FUZZ_CC) -o build/fuzz/fuzz-jsontext fuzz/fuzz_jsontext.c $(COMMON_SRC) \
	  $(shell pkg-config --libs jansson 2>/dev/null) -lm
	build/fuzz/fuzz-jsontext -max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=2048 \
	  -max_len=65536 -dict=fuzz/request.dict -artifact_prefix=build/fuzz/jsontext- \
	  build/fuzz/jsontext-corpus fuzz/corpus

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
