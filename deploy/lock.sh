#!/usr/bin/env bash
# Regenerate the pinned, hash-checked lock files the Dockerfile installs with
# --require-hashes:
#   deploy/requirements.lock  runtime dependencies of pyproject.toml, with the `worker` extra
#   deploy/build.lock         the build backend (setuptools) that builds our wheel
# Run after changing [project].dependencies or [build-system].requires and commit
# the result; pass --upgrade to move every pin to the newest allowed version.
# Needs PyPI; pip-tools is installed in a throwaway virtualenv.
set -euo pipefail
# Resolve against PyPI alone, whatever pip.conf says on this machine (local wheel folders,
# mirrors or constraints would leak into the lock).
export PIP_CONFIG_FILE=/dev/null
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install --quiet "pip-tools>=7.4,<8"
common=(--quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links "$@")
"$tools/bin/pip-compile" "${common[@]}" --extra worker --output-file deploy/requirements.lock pyproject.toml
"$tools/bin/pip-compile" "${common[@]}" --only-build-deps --build-deps-for wheel \
  --output-file deploy/build.lock pyproject.toml
sed -i 's|^#    pip-compile .*|#    deploy/lock.sh|' deploy/requirements.lock deploy/build.lock
echo "deploy/requirements.lock and deploy/build.lock updated" >&2
