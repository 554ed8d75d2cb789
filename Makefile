# qshell - scriptable QEMU experiments.  See README.md.
#
#   make            build ./qshell
#   make test       install what is missing, build, run every test tier (real QEMU)
#   make test-unit  the fast tier: C unit tests and Lua tests without QEMU
#   make bench      benchmarks, printed as ratios against references
#   make fuzz       the libFuzzer targets for FUZZ_TIME s each (make test runs them 10 s each)
#   make deps       install the distribution packages qshell needs
#   make demo       the main job on the default guest
#   make install    PREFIX=/usr/local DESTDIR= (make uninstall: the same files)
#   make doc        rewrite doc/reference.md from the contract comments
#   make test-fresh the README's two commands on a bare Debian 12 root (root only)
#   make test-soak, make test-scale  the long tiers (faults; 2000 runs on a Slurm cluster)
#
# Switches: V=1 (full commands), WERROR=1, SAN=address,undefined, VERSION=...

.DEFAULT_GOAL := all

PKG_CONFIG ?= pkg-config
LUA_PC     ?= lua5.4
PREFIX     ?= /usr/local
DESTDIR    ?=
CC         ?= cc
CFLAGS     ?= -O2 -g
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)

PKGS := $(LUA_PC) json-c libedit libcrypto
# libcrypto is not linked: shell/sha256.c opens it when a hash is first
# asked for (its headers are used; its soname is read off the library).
LINK_PKGS := $(LUA_PC) json-c libedit

# The package flags are computed by a rule, after the build packages are
# installed: GNU make builds an included makefile that is missing or out of
# date, then restarts with it read.  So a bare machine needs one `make`, not
# two (flags read at parse time would be empty before `make deps` ran).
# Goals that compile nothing skip it, so `make clean` installs nothing.
CONFIG_MK := build/config-$(LUA_PC).mk
NO_CONFIG_GOALS := deps deps-build clean format uninstall test-fresh help
ifneq ($(filter-out $(NO_CONFIG_GOALS),$(or $(MAKECMDGOALS),all)),)
include $(CONFIG_MK)
endif

QS_CFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wshadow -Wstrict-prototypes \
            -Wmissing-prototypes -Wwrite-strings -Wundef -MMD -MP -Ishell -Ibuild \
            -DQSHELL_VERSION='"$(VERSION)"' -pthread
QS_LDLIBS = $(PKG_LIBS) -lm -pthread

ifeq ($(WERROR),1)
QS_CFLAGS += -Werror
endif
ifneq ($(SAN),)
QS_CFLAGS  += -fsanitize=$(SAN) -fno-omit-frame-pointer
QS_LDFLAGS += -fsanitize=$(SAN)
endif

ifeq ($(V),1)
Q :=
msg = @true
else
Q := @
msg = @printf '  %-6s %s\n' $(1) $(2)
endif

CORE_SRCS := shell/util.c shell/qmp.c shell/proc.c shell/console.c shell/ram.c shell/sha256.c
SRCS := $(CORE_SRCS) shell/sig.c shell/ljson.c shell/lqmp.c shell/lproc.c shell/los.c shell/lhash.c shell/lram.c shell/lconsole.c \
        shell/luaenv.c shell/meta.c shell/repl.c shell/main.c
OBJS := $(SRCS:shell/%.c=build/%.o) build/stdlib_gen.o
STDLIB := $(shell find stdlib -name '*.lua' | LC_ALL=C sort)

UNIT_TESTS := build/test_qmp
include tests/unit/Makefile.inc

PHONY_DOC := docs doc
.PHONY: $(PHONY_DOC) all test test-soak test-scale test-fresh deps-build test-unit test-int bench deps demo guest install uninstall clean format check-deps

all: qshell plugins docs

# The Lua reference, generated from the contract comments in stdlib/ by the
# binary just built: the man page qshell-lua(7) and the LuaCATS annotations
# (installed), and doc/reference.md (committed; `make doc` rewrites it, and a
# unit test fails when it is not what the comments say).
DOCS := build/doc/qshell-lua.7 build/doc/meta/qemu.lua
docs: $(DOCS)

build/doc/qshell-lua.7: qshell
	$(call msg,DOC,$@)
	$(Q)mkdir -p $(@D) && ./qshell doc --man > $@.tmp && mv $@.tmp $@

build/doc/meta/qemu.lua: qshell
	$(call msg,DOC,$@)
	$(Q)mkdir -p $(@D) && ./qshell doc --meta > $@.tmp && mv $@.tmp $@

doc: qshell
	$(call msg,DOC,doc/reference.md)
	$(Q)./qshell doc --markdown > doc/reference.md.tmp && mv doc/reference.md.tmp doc/reference.md

include plugins/Makefile.inc
include tests/fuzz/Makefile.inc

qshell: $(OBJS)
	$(call msg,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $(QS_CFLAGS) $(LDFLAGS) $(QS_LDFLAGS) -o $@ $(OBJS) $(QS_LDLIBS)

build/%.o: shell/%.c | build/.dir
	$(call msg,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) $(QS_CFLAGS) -c -o $@ $<

build/stdlib_gen.o: build/stdlib_gen.c
	$(call msg,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) $(QS_CFLAGS) -c -o $@ $<

build/stdlib_gen.c: build/embed $(STDLIB)
	$(call msg,EMBED,stdlib)
	$(Q)build/embed $@ stdlib $(STDLIB)

# A build-host tool: no sanitizers, no project libraries.
build/embed: shell/embed.c | build/.dir
	$(call msg,HOSTCC,$<)
	$(Q)$(CC) -O1 -o $@ $<

build/.dir:
	$(Q)mkdir -p build && touch $@

# ---- tests ----

build/test_qmp: tests/unit/test_qmp.c build/qmp.o build/util.o
	$(call msg,LINK,$@)
	$(Q)$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) $(QS_CFLAGS) $(LDFLAGS) $(QS_LDFLAGS) -o $@ $^ $(QS_LDLIBS)

# Test tools stand in for QEMU or a terminal: built plain, never with SAN
# (a sanitizer would turn fakeqmp's deliberate crashes into its own exits).
build/fakeqmp: tests/unit/fakeqmp.c | build/.dir
	$(call msg,LINK,$@)
	$(Q)$(CC) -O1 -Wall -Wextra -o $@ $<

build/ptyrun: tests/tools/ptyrun.c | build/.dir
	$(call msg,LINK,$@)
	$(Q)$(CC) -O1 -Wall -o $@ $<

TEST_TOOLS := build/fakeqmp build/ptyrun

test-unit: qshell $(UNIT_TESTS) $(TEST_TOOLS) fuzz-build
	$(Q)tests/run.sh unit

test: deps all guest $(UNIT_TESTS) $(TEST_TOOLS) fuzz-build
	$(Q)tests/run.sh all

# The soak and fault tier at full length (about 8 minutes; make test runs a
# 2-minute version): a 300-run sweep under faults, 10^4 launches, 10^5 QMP
# commands in one shell.
test-soak: deps all guest
	$(Q)QSHELL_SOAK=full tests/run.sh soak

# Sweeps at scale (about 4 minutes): 2000 runs on the three-node test
# cluster at Slurm's default limits, the submitter killed and resumed.
test-scale: deps all guest
	$(Q)QSHELL_TEST_QEMUS=system tests/run.sh scale

# The README's commands on a bare Debian 12 root (tests/fresh.sh; needs root).
test-fresh:
	$(Q)tests/fresh.sh

bench: deps all
	$(Q)tests/bench/run.sh

# Everything the tests and the demo use (QEMU, qemu-img, mkfs, busybox...).
deps:
	$(Q)tests/deps.sh all

# What compiling needs: the compiler and the -dev packages.
deps-build:
	$(Q)tests/deps.sh build

$(CONFIG_MK): Makefile tests/deps.sh | build/.dir
	$(Q)tests/deps.sh build
	$(call msg,CONFIG,$@)
	$(Q)cflags=$$($(PKG_CONFIG) --cflags $(PKGS)) && libs=$$($(PKG_CONFIG) --libs $(LINK_PKGS)) || \
	    { echo "pkg-config cannot find $(PKGS) (LUA_PC=lua-5.4, lua54 or lua for other distributions)" >&2; exit 1; }; \
	so=$$(objdump -p "$$($(PKG_CONFIG) --variable=libdir libcrypto)/libcrypto.so" 2>/dev/null | sed -n 's/^ *SONAME *//p'); \
	printf 'PKG_CFLAGS := %s -DQS_LIBCRYPTO=\\"%s\\"\nPKG_LIBS := %s\n' "$$cflags" "$${so:-libcrypto.so.3}" "$$libs" > $@.tmp && mv $@.tmp $@

# The default guest: rebuilt only when its inputs change (build.sh checks).
guest: deps $(QS_ROI_HELPER)
	$(Q)QSHELL_ROI_HELPER=$(QS_ROI_HELPER) guest/build.sh build/guest

# The main job on the default guest: warm up and checkpoint, then a sweep
# of 12 runs from that checkpoint with 2 workers; prints the results table,
# the summary with confidence intervals, plugin on against off, and draws
# the figure build/demo/workload.png.
demo: deps all guest
	$(Q)rm -rf build/demo && mkdir -p build/demo
	$(Q)./qshell run scripts/warmup.lua build/demo/warm.ckpt
	$(Q)./qshell run scripts/sweep.lua build/demo/warm.ckpt build/demo/results.csv
	$(Q)./qshell results build/demo/results.csv
	$(Q)./qshell results build/demo/results.csv --baseline plugin=off
	$(Q)./qshell results build/demo/results.csv --plot x=size y=workload_s --group plugin -o build/demo/workload.png

# Installed layout (qemu/util/paths.lua finds it from the binary's location):
#   PREFIX/bin/qshell, PREFIX/lib/qshell/plugins/*.so, PREFIX/lib/qshell/qshell-roi
#   (the guest's ROI helper), PREFIX/include/qshell-roi.h,
#   PREFIX/share/qshell/guest/ (the guest builder and its inputs),
#   PREFIX/share/qshell/scripts/*.lua, PREFIX/share/qshell/meta/qemu.lua (LuaCATS),
#   PREFIX/share/man/man1/qshell.1, PREFIX/share/man/man7/qshell-lua.7
# uninstall removes exactly these files, then the directories install made
# when they are empty.
INST_PLUGINS := libinsn.so libhotblocks.so libgate.so
GUEST_FILES  := $(shell cd guest && find build.sh initramfs rootfs -type f | LC_ALL=C sort)
EXAMPLES     := $(notdir $(wildcard scripts/*.lua))
D_BIN    = $(DESTDIR)$(PREFIX)/bin
D_PLUG   = $(DESTDIR)$(PREFIX)/lib/qshell/plugins
D_SHARE  = $(DESTDIR)$(PREFIX)/share/qshell
D_MAN1   = $(DESTDIR)$(PREFIX)/share/man/man1
D_MAN7   = $(DESTDIR)$(PREFIX)/share/man/man7
D_INC    = $(DESTDIR)$(PREFIX)/include

install: qshell plugins docs
	$(call msg,INSTALL,$(DESTDIR)$(PREFIX))
	$(Q)install -d $(D_BIN) $(D_PLUG) $(D_SHARE)/scripts $(D_SHARE)/meta $(D_MAN1) $(D_MAN7)
	$(Q)install -m 755 qshell $(D_BIN)/qshell
	$(Q)for p in $(INST_PLUGINS); do install -m 644 $(QS_PLUGIN_OUT)/$$p $(D_PLUG)/$$p || exit 1; done
	$(Q)install -m 755 $(QS_ROI_HELPER) $(D_PLUG)/../qshell-roi
	$(Q)install -D -m 644 roi/qshell-roi.h $(D_INC)/qshell-roi.h
	$(Q)for f in $(GUEST_FILES); do \
	    if [ -x guest/$$f ]; then m=755; else m=644; fi; \
	    install -D -m $$m guest/$$f $(D_SHARE)/guest/$$f || exit 1; done
	$(Q)for f in $(EXAMPLES); do install -m 644 scripts/$$f $(D_SHARE)/scripts/$$f || exit 1; done
	$(Q)install -m 644 doc/qshell.1 $(D_MAN1)/qshell.1
	$(Q)install -m 644 build/doc/qshell-lua.7 $(D_MAN7)/qshell-lua.7
	$(Q)install -m 644 build/doc/meta/qemu.lua $(D_SHARE)/meta/qemu.lua

uninstall:
	$(call msg,RM,$(DESTDIR)$(PREFIX))
	$(Q)rm -f $(D_BIN)/qshell $(D_MAN1)/qshell.1 $(D_MAN7)/qshell-lua.7 $(D_SHARE)/meta/qemu.lua $(addprefix $(D_PLUG)/,$(INST_PLUGINS)) \
	    $(D_PLUG)/../qshell-roi $(D_INC)/qshell-roi.h \
	    $(addprefix $(D_SHARE)/guest/,$(GUEST_FILES)) $(addprefix $(D_SHARE)/scripts/,$(EXAMPLES))
	$(Q)for d in $(sort $(dir $(addprefix $(D_SHARE)/guest/,$(GUEST_FILES)))); do \
	    while [ "$$d" != "$(D_SHARE)/" ] && rmdir "$$d" 2>/dev/null; do d=$$(dirname "$$d")/; done; done
	$(Q)rmdir $(D_SHARE)/scripts $(D_SHARE)/meta $(D_SHARE) $(D_PLUG) $(DESTDIR)$(PREFIX)/lib/qshell 2>/dev/null || true
	$(Q)rmdir $(D_INC) 2>/dev/null || true

clean:
	rm -rf build/*.o build/*.d build/doc build/stdlib_gen.c build/embed build/test_* build/fakeqmp build/ptyrun build/plugins build/roi build/bench build/fuzz qshell

format:
	clang-format -i shell/*.c shell/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c

-include $(wildcard build/*.d)
