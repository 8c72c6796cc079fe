#!/usr/bin/env bash
# Installs what building and testing udp-fanout needs, if it is missing. Idempotent: on a
# machine that has everything it only checks. Uses apt (Debian/Ubuntu); needs root or sudo when
# something is missing.
#
#   scripts/install-deps.sh build   # to build and run (C compiler toolchain for eBPF, pkg-config)
#   scripts/install-deps.sh test    # also the real clients/servers the integration tests use
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
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
