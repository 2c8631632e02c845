# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench soak lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# `make run` needs no setup: state lives where every `custody` command looks for it, the per-user
# data dir ($$XDG_DATA_HOME/custody, i.e. ~/.local/share/custody) unless CUSTODY_DATA_DIR or
# data_dir in ~/.config/custody/custody.toml says otherwise; `custody doctor` prints it.
run: $(STAMP)
	$(BIN)/custody serve

# The suite waits more than it computes (servers, fsyncs, subprocesses): three pytest-xdist workers,
# one test file each at a time (module fixtures stay in one worker). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/ruff check governance storage tests bench
	$(BIN)/lint-imports
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure"; fi; \
	exit $$rc

bench: $(STAMP)
	$(BIN)/python -m bench

# kill -9 under a 16-client load, five rounds, on SQLite (and on PostgreSQL with SOAK_DATABASE_URL)
soak: $(STAMP)
	$(BIN)/python -m bench.soak --rounds 5 $(if $(SOAK_DATABASE_URL),--database-url $(SOAK_DATABASE_URL))
	$(BIN)/python -m bench.soak --rounds 5 --replicas 2 --clients 32 $(if $(SOAK_DATABASE_URL),--database-url $(SOAK_DATABASE_URL))

lint: $(STAMP)
	$(BIN)/ruff check governance storage tests bench
	$(BIN)/mypy storage

clean:
	rm -rf $(VENV) .custody
