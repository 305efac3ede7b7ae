#!/bin/sh
# jobwire's install, as the container image has it: build the wheel from a source tree, then
# install it with its extras into a fresh virtual environment, every dependency pinned by
# requirements.lock. The Dockerfile's builder stage runs this script, and so does
# tests/packaging/test_docker.py (no container daemon there), so the two cannot drift.
#
#   sh deploy/docker/install.sh SRC VENV [EXTRAS]     e.g. sh deploy/docker/install.sh . /opt/jobwire all
#
# SRC holds pyproject.toml, README.md, LICENSE, requirements.lock and src/; EXTRAS is a comma
# list of pip extras (kubernetes, amqp, mqtt, postgres, aws, all) or empty for the core.
set -eu

src=$1
venv=$2
extras=${3:-}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
# the wheel alone (its dependencies come next, pinned); setuptools builds it in an isolated env
"$venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$dist" "$src"
wheel=$(ls "$dist"/jobwire-*.whl)
if [ -n "$extras" ]; then
    requirement="jobwire[$extras] @ file://$wheel"
else
    requirement="jobwire @ file://$wheel"
fi
"$venv/bin/pip" install --quiet --constraint "$src/requirements.lock" "$requirement"
"$venv/bin/jobwire" --version
