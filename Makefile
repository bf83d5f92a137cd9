.PHONY: run test test-load lint docs bench bench-quick bench-load

run:  ## create/reuse .venv and run the whole embedded stack in the foreground (ARGS=... for flags)
	scripts/run.sh $(ARGS)

test:  ## create .venv, install, lint, type-check and run every test
	scripts/test.sh

test-load:  ## the load tests (thousands of installs, one worker killed; about 5 min)
	.venv/bin/pytest -m load -p no:cacheprovider tests/chaos

docs:  ## create/reuse .venv and build the documentation site into site/ (strict: a broken link fails)
	scripts/docs.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy .

bench:  ## create/reuse .venv and run every benchmark (< 15 min; ARGS=--quick for < 2 min)
	scripts/bench.sh $(ARGS)

bench-quick:  ## every benchmark scaled down (< 2 min)
	scripts/bench.sh --quick $(ARGS)

bench-load:  ## thousands of installs held in flight at once (ARGS="--count 5000 --workers 2"; minutes)
	.venv/bin/python -m bench.bench_load $(ARGS)
