# Shortcuts; the README's commands are the reference.
.PHONY: test lint bench bench-quick

test:
	.venv/bin/ruff check daemon tests && .venv/bin/mypy && .venv/bin/pytest

lint:
	.venv/bin/ruff check daemon tests bench && .venv/bin/mypy && .venv/bin/hadolint Dockerfile

bench:
	.venv/bin/python -m bench

bench-quick:
	.venv/bin/python -m bench --quick
