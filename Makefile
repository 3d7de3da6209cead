# isobench: `make bench` runs the main job, `make test` the whole test suite.
# Both set everything up first; `make setup` is idempotent.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Debian packages: the runtime and its references (busybox-static runc crun libseccomp2),
# the workload tools baked into the image (fio stress-ng sysbench iperf3), image interop
# checks (skopeo umoci), the compiler for isobench's own static C programs in the image
# (gcc libc6-dev), the VM guest and its scratch disk (qemu-system-x86 e2fsprogs), the libvirt
# side (qemu-utils libvirt-daemon libvirt-daemon-driver-qemu; libvirt-dev pkg-config to build
# libvirt-python), and the basics (iproute2 util-linux kmod python3-venv).
APT_PACKAGES := busybox-static runc crun libseccomp2 fio stress-ng sysbench iperf3 skopeo umoci hyperfine iproute2 util-linux kmod python3-venv gcc libc6-dev qemu-system-x86 e2fsprogs qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-dev pkg-config
STAMP  := $(VENV)/.installed

.PHONY: setup system-packages bench bench-runtime test unit integration lint cleanup clean

setup: system-packages $(STAMP)
	@# Bytecode up front: with PYTHONDONTWRITEBYTECODE set, every isobench-runtime
	@# call would otherwise recompile the package (tens of ms per container launch).
	@$(PY) -m compileall -q harness
	@# The VM guest's kernel: a Debian linux-image package, fetched once into the cache (root only).
	@if [ "$$(id -u)" = 0 ]; then $(VENV)/bin/isobench vm fetch-kernel >/dev/null; fi

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "isobench needs Debian packages that are missing; run as root:"; \
	    echo "  apt-get update && apt-get install -y $$missing"; \
	    exit 2; \
	  fi; \
	fi
	@# libvirt's QEMU driver, run as root, refuses to start unless its compiled-in qemu user
	@# exists; Debian creates it only with libvirt-daemon-system (which pulls in systemd).
	@if [ "$$(id -u)" = 0 ] && ! getent passwd libvirt-qemu >/dev/null; then \
	  useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
	    --shell /usr/sbin/nologin libvirt-qemu; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The main job: the suite in randomised blocks on every platform this host runs,
# then the report. PROFILE=smoke|quick|full (quick: about 10 minutes here).
PROFILE ?= quick
bench: setup
	@path=$$($(VENV)/bin/isobench run --profile $(PROFILE) --results results | tail -n 1) && \
	  test -n "$$path" && $(VENV)/bin/isobench report "$$path"

# Microbenchmarks of isobench itself: container launch against runc and crun,
# overlay roots, image rebuilds, libvirt against plain QEMU (pytest-benchmark).
bench-runtime: setup
	$(VENV)/bin/pytest bench/test_runtime_startup.py bench/test_image.py bench/test_harness_timing.py bench/test_vm.py -p no:cacheprovider \
	  --benchmark-columns=median,iqr,min,max,rounds --benchmark-sort=mean

test: setup
	$(VENV)/bin/pytest tests -p no:cacheprovider

unit: setup
	$(VENV)/bin/pytest tests/unit

integration: setup
	$(VENV)/bin/pytest tests/integration

lint: setup
	$(VENV)/bin/ruff check harness bench tests
	$(VENV)/bin/ruff format --check harness bench tests
	$(VENV)/bin/mypy

cleanup: setup
	$(VENV)/bin/isobench cleanup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
