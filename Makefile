.PHONY: test lint

test:  ## create .venv, install, lint, type-check and run every test
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy .
