# The two set-up commands of the README's quick start live here, so CI runs exactly what users run.
PYTHON ?= python3
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install-test system-deps test

install-test:
	$(PYTHON) -m pip install -q torch==2.13.0 -e '.[test]'

# Debian packages the tests use: Fashion-MNIST's IDX files and Chromium (the report's browser test).
# Needs root; without them, the tests that use them skip and say why.
DEBIAN_PACKAGES := dataset-fashion-mnist chromium
system-deps:
	@missing=""; \
	[ -d $(FASHION_MNIST_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then echo "Debian packages present: $(DEBIAN_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "missing Debian packages:$$missing (sudo apt-get install$$missing); their tests will skip"; fi

test: system-deps install-test
	$(PYTHON) -m pytest -q
