#!/usr/bin/env bash
# Prints the interpreter `make` builds .venv with (`make PY=/path/to/python3.x` overrides it).
#
# The first of these that is Python >= 3.11 and can make a venv (venv, ensurepip):
#   /usr/bin/python3, /usr/local/bin/python3, then the first python3 on PATH.
# Why the system's first: distributions (Debian, Ubuntu, Fedora) and the official python container
# images (our Dockerfile's base) compile CPython with profile-guided and link-time optimisation;
# pyenv and asdf build it without them unless PYTHON_CONFIGURE_OPTS asks, and on a developer machine
# (this project's build machine too) theirs is the python3 on PATH. Measured here (docs/performance.md,
# "Session 20"): the same jobwire cost ~10 % less CPU per run on Debian's 3.11 than on pyenv's 3.11.
set -euo pipefail

usable() {
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

for candidate in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && usable "$candidate"; then
        echo "$candidate"
        exit 0
    fi
done
# none qualifies: the Makefile's version check says what is missing
echo python3
