#!/usr/bin/env bash
# The real network in one command, for anyone with the sui binary: a local Sui network,
# the dtp package published on it, its Move tests, and the live suite -- the tests that
# run on the node stand-in in CI -- run against the real node instead.
#
#   bash scripts/sui-localnet.sh          # the sui binary on PATH, or SUI_BIN=/path/to/sui
#
# Steps: bootstrap (scripts/bootstrap.sh); a localnet (`sui start --with-faucet
# --force-regenesis` in the background, its log in build/sui-localnet.log, stopped on
# exit; or the one already serving on 127.0.0.1:9000 and its faucet on 9123, left
# running); the Sui CLI's `localnet` environment made active; its active address funded
# by the faucet; `dtp deploy --network localnet` (the package ID is recorded, as for any
# deploy); `sui move test` in move/dtp; a fresh key funded by the faucet; then the live
# suite with DTP_SUI_RPC, DTP_SUI_PACKAGE and DTP_SUI_KEY set (tests/support/sui_network.py: the
# tests' one switch between the stand-in and a real node). The last line says PASS or FAIL.
#
# Environment: SUI_BIN (the sui binary), DTP_LIVE_FUNDS_SUI (SUI the fresh key is given,
# default 200), PYTEST_ARGS (more pytest arguments, e.g. "-x -v").
set -uo pipefail

SUI="${SUI_BIN:-$(command -v sui || true)}"
if [[ -z "$SUI" || ! -f "$SUI" || ! -x "$SUI" ]]; then
  echo "scripts/sui-localnet.sh needs the Sui CLI: install sui (https://docs.sui.io/guides/developer/getting-started/sui-install) and put it on PATH, or set SUI_BIN to its path." >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
RPC_PORT=9000
FAUCET_PORT=9123
RPC="http://127.0.0.1:$RPC_PORT"
LOG="$ROOT/build/sui-localnet.log"
FUNDS_SUI="${DTP_LIVE_FUNDS_SUI:-200}"
# the tests the CI runs on the stand-in that also run on a real node (tests/support/sui_network.py)
LIVE_TESTS=(
  tests/ledger/test_sui_transactions.py
  tests/ledger/test_sui_shared_key.py
  tests/ledger/test_payment_models.py
  tests/cli/test_funds_commands.py
  tests/cli/test_chain_commands.py
  tests/project/test_docs_match_code.py
  tests/project/test_payment_model_examples.py
  tests/daemon/test_two_machines.py
)
LIVE_SELECTION="live or sui"

started_pid=""
outcome="FAIL (stopped before the live suite)"

say() { printf '\033[1m[sui-localnet]\033[0m %s\n' "$*"; }

finish() {
  if [[ -n "$started_pid" ]] && kill -0 "$started_pid" 2>/dev/null; then
    say "stopping the localnet this script started (pid $started_pid)"
    kill -INT "$started_pid" 2>/dev/null
    for _ in $(seq 1 50); do
      kill -0 "$started_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$started_pid" 2>/dev/null
    wait "$started_pid" 2>/dev/null
  fi
  echo "sui-localnet: $outcome"
}
trap finish EXIT

fail() {
  outcome="FAIL ($*)"
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sui_client() { "$SUI" client --yes "$@"; }

SUI_VERSION="$("$SUI" --version 2>/dev/null || true)"
say "using $SUI (${SUI_VERSION:-version unknown})"
# move/dtp's `#[error(code = N)]` constants need a compiler with Sui PR #21426, first
# released in the 1.46 line (move/README.md); an older CLI fails the build with errors
# that do not say why
if [[ "$SUI_VERSION" =~ ([0-9]+)\.([0-9]+)\.[0-9]+ ]]; then
  major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  if ((major < 1 || (major == 1 && minor < 46))); then
    echo "scripts/sui-localnet.sh needs Sui CLI 1.46 or newer (move/dtp uses #[error(code = N)], Sui PR #21426); $SUI is ${BASH_REMATCH[0]}." >&2
    fail "sui ${BASH_REMATCH[0]} is older than 1.46"
  fi
else
  say "could not read the version of $SUI; it must be 1.46 or newer"
fi

say "bootstrap"
bash "$ROOT/scripts/bootstrap.sh" || fail "bootstrap"

if port_open "$RPC_PORT"; then
  say "a Sui network already serves on 127.0.0.1:$RPC_PORT: using it (left running)"
  port_open "$FAUCET_PORT" || fail "no faucet on 127.0.0.1:$FAUCET_PORT beside it (start it with --with-faucet)"
else
  mkdir -p "$(dirname "$LOG")"
  say "starting a localnet: sui start --with-faucet --force-regenesis (log: $LOG)"
  "$SUI" start --with-faucet --force-regenesis >"$LOG" 2>&1 &
  started_pid=$!
  for _ in $(seq 1 240); do
    if port_open "$RPC_PORT" && port_open "$FAUCET_PORT"; then
      break
    fi
    kill -0 "$started_pid" 2>/dev/null || { tail -n 20 "$LOG" >&2; fail "sui start exited"; }
    sleep 0.5
  done
  if ! { port_open "$RPC_PORT" && port_open "$FAUCET_PORT"; }; then
    tail -n 20 "$LOG" >&2
    fail "the localnet did not open ports $RPC_PORT and $FAUCET_PORT in 120 s"
  fi
fi

say "the Sui CLI's localnet environment"
if ! sui_client envs --json 2>/dev/null | grep -q '"localnet"'; then
  sui_client new-env --alias localnet --rpc "$RPC" || fail "sui client new-env"
fi
sui_client switch --env localnet || fail "sui client switch --env localnet"
active="$(sui_client active-address 2>/dev/null | tail -n 1)"
[[ "$active" == 0x* ]] || fail "the Sui CLI has no active address"

say "funding the CLI's active address $active from the faucet"
sui_client faucet >/dev/null || fail "sui client faucet"
for _ in $(seq 1 60); do
  sui_client gas --json 2>/dev/null | grep -q gasCoinId && break
  sleep 1
done
sui_client gas --json 2>/dev/null | grep -q gasCoinId || fail "the faucet's coins never reached $active"

say "publishing move/dtp: dtp deploy --network localnet"
deployed="$("$PY" -m dtp deploy --network localnet --sui-bin "$SUI" --json)" || fail "dtp deploy"
package="$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["package_id"])' <<<"$deployed")" \
  || fail "dtp deploy printed no package ID"
say "package $package"

say "sui move test (move/dtp)"
move_tests=ok
(cd "$ROOT/move/dtp" && "$SUI" move test) || move_tests=failed

say "a fresh key for the live suite, funded with $FUNDS_SUI SUI from the faucet"
read -r key address < <("$PY" -c '
from dtp.identity.keys import HostIdentity
identity = HostIdentity.generate()
print(identity.to_sui_bech32(), identity.sui_address)')
[[ "$address" == 0x* ]] || fail "no fresh key"
balance() {
  "$PY" -m dtp balance "$address" --ledger "localnet@$RPC" --sui-package "$package" --json \
    | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["balance_mist"])'
}
wanted=$((FUNDS_SUI * 1000000000))
for _ in $(seq 1 60); do
  have="$(balance 2>/dev/null || echo 0)"
  (( have >= wanted )) && break
  sui_client faucet --address "$address" >/dev/null 2>&1 || true
  sleep 2
done
have="$(balance 2>/dev/null || echo 0)"
(( have >= wanted )) || fail "the faucet gave $address $have MIST, not the $wanted wanted"

say "the live suite on $RPC"
export DTP_SUI_RPC="$RPC" DTP_SUI_PACKAGE="$package" DTP_SUI_KEY="$key"
# shellcheck disable=SC2086  # PYTEST_ARGS is words on purpose
(cd "$ROOT" && "$PY" -m pytest -p no:cacheprovider -ra ${PYTEST_ARGS:-} \
  -k "$LIVE_SELECTION" "${LIVE_TESTS[@]}")
suite=$?

if [[ $suite -eq 0 && $move_tests == ok ]]; then
  outcome="PASS (package $package; sui move test passed; the live suite passed)"
elif [[ $suite -eq 0 ]]; then
  outcome="FAIL (sui move test failed; the live suite passed)"
  exit 1
else
  outcome="FAIL (the live suite failed, pytest status $suite; sui move test $move_tests)"
  exit 1
fi
