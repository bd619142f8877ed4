# The two set-up commands of the README's quick start live here, so CI runs exactly what users run.
PYTHON ?= python3
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install install-test data test demo

install:
	$(PYTHON) -m pip install -q torch==2.13.0 -e .

install-test:
	$(PYTHON) -m pip install -q torch==2.13.0 -e '.[test]'

# Fashion-MNIST from Debian's package (needs root; tests that use it skip when it is absent).
data:
	@if [ -d $(FASHION_MNIST_DIR) ]; then echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not installed (run: sudo apt-get install dataset-fashion-mnist); its tests will skip"; fi

test: data install-test
	$(PYTHON) -m pytest -q

demo: install
	regopt train
