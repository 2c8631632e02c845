# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench soak lint venv witness-venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# rekor-verifier pins old versions of what Custody uses; its RFC 6962 checks need none of them
	$(BIN)/python -m pip install --quiet --no-deps rekor-verifier==4.0.0
	touch $(STAMP)

venv: $(STAMP)

# A real C2SP tlog-witness for tests/test_witness.py: aics-witness needs Python >= 3.12, in a venv
# of its own. The first of pyenv's 3.13/3.12, python3.13, python3.12 on PATH (PY312=… overrides).
WITNESS_VENV := .venv-witness
WITNESS_STAMP := $(WITNESS_VENV)/.installed
PY312 ?= $(shell for p in /root/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3 python3.13 python3.12; do $$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)

$(WITNESS_STAMP):
	@test -n "$(PY312)" || { echo "make witness-venv: no Python >= 3.12 found: apt-get install python3.12, or PY312=/path/to/python3.12 make witness-venv"; exit 1; }
	test -x $(WITNESS_VENV)/bin/python || $(PY312) -m venv $(WITNESS_VENV)
	$(WITNESS_VENV)/bin/python -m pip install --quiet aics-witness==0.1.0
	touch $(WITNESS_STAMP)

witness-venv: $(WITNESS_STAMP)

# `make run` needs no setup: state lives where every `custody` command looks for it, the per-user
# data dir ($$XDG_DATA_HOME/custody, i.e. ~/.local/share/custody) unless CUSTODY_DATA_DIR or
# data_dir in ~/.config/custody/custody.toml says otherwise; `custody doctor` prints it.
run: $(STAMP)
	$(BIN)/custody serve

# The suite waits more than it computes (servers, fsyncs, subprocesses): three pytest-xdist workers,
# one test file each at a time (module fixtures stay in one worker). TEST_WORKERS=0 runs serially.
# Python may write its bytecode caches here whatever the shell says (PYTHONDONTWRITEBYTECODE=1
# is common): without them each worker re-rewrites the asserts of all 400 test and plugin modules
# (~4.6 s of CPU each) and each of the suite's hundreds of `custody` subprocesses compiles the
# modules it imports again (~0.05 s each).
TEST_WORKERS ?= 3
test: $(STAMP)
	@$(MAKE) --no-print-directory witness-venv || echo "make test: no witness venv; tests/test_witness.py skips (under CI=true it fails)"
	$(BIN)/ruff check governance storage tests bench
	$(BIN)/lint-imports
	@env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure"; fi; \
	exit $$rc

# the gateway bench measures the pass-through floor beside Custody (bench/passthrough_proxy.py)
bench: $(STAMP)
	CUSTODY_BENCH_FLOOR=1 $(BIN)/python -m bench

# kill -9 under a 16-client load, five rounds, on SQLite (and on PostgreSQL with SOAK_DATABASE_URL)
soak: $(STAMP)
	$(BIN)/python -m bench.soak --rounds 5 $(if $(SOAK_DATABASE_URL),--database-url $(SOAK_DATABASE_URL))
	$(BIN)/python -m bench.soak --rounds 5 --replicas 2 --clients 32 $(if $(SOAK_DATABASE_URL),--database-url $(SOAK_DATABASE_URL))

lint: $(STAMP)
	$(BIN)/ruff check governance storage tests bench
	$(BIN)/mypy storage governance

clean:
	rm -rf $(VENV) $(WITNESS_VENV) .custody
