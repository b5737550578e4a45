# The two entry points of the README's Quick start. Both run scripts/setup first,
# which installs what a fresh Debian machine lacks and is quick when nothing is.
.PHONY: demo test setup lint

setup:
	@scripts/setup

# The main job end to end, offline: build the local conda channel, lock, build
# in a sandbox at /data0/sw, pack, and build the layered image (a registry on
# 127.0.0.1:5000 holds its base, as production sites keep bases in theirs).
demo: setup
	@scripts/with-engine scripts/with-registry .venv/bin/doit demo site=sites/offline.toml

# The whole test suite, Docker and registry tests included.
test: setup
	@scripts/with-engine .venv/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check src tests dodo.py
	.venv/bin/mypy
