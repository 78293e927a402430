#!/usr/bin/env bash
# The project's test command (see README): installs what the tests need, then runs the
# whole workspace test suite, including the interop tests against coturn's clients and
# sipp, and the storage tests on both SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh

# Tests that need a third-party peer fail (instead of skipping) when it is missing
# and CI is set; setup.sh above installed them, so nothing should be skipped here.
export CI=${CI:-1}
export TANDEM_TEST_POSTGRES_URL=${TANDEM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}

# The interop tests start the real binaries; build them first so the first test does not
# time out waiting for a build.
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
