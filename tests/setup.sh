#!/usr/bin/env bash
# Install what keyward's tests need on a fresh Debian machine. Idempotent: a second run only
# checks. Python packages go into ./.venv so the system Python stays untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The `fips` build compiles AWS-LC's FIPS module (aws-lc-fips-sys): CMake, Go, Perl, a C compiler.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v perl >/dev/null 2>&1 || need_apt+=(perl)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.keyward-reqs
if ! cmp -s tests/py/requirements.txt "$stamp" 2>/dev/null; then
  echo "setup: installing Python test requirements into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
  cp tests/py/requirements.txt "$stamp"
fi
# Mutation testing (`make mutants`, .ci/mutants-in-diff.sh): cargo-mutants from crates.io.
MUTANTS_VERSION=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -q " $MUTANTS_VERSION"; then
  echo "setup: installing cargo-mutants $MUTANTS_VERSION (about 3 minutes on 2 cores)"
  cargo install -q cargo-mutants --version "$MUTANTS_VERSION" --locked
fi
echo "setup: ok"
