#!/usr/bin/env bash
# First look at DIME on embedded defaults: the two-domain demo (what every hop sees), then a
# demonstration dark domain bootstrapped in ./dime-demo (file keystore: organisation keys and
# signet, relay certificate, configuration, a trustful user, the _dx TXT record to publish), and
# finally the sidecar itself running on it (`dime start`: milter, policy, socketmap, DMTP relay and
# its LMTP side, metrics) until Ctrl-C.
set -euo pipefail
domain="${1:-example.test}"
dir="${2:-dime-demo}"
dime="$(cd "$(dirname "$0")/.." && pwd)/bin/dime"
echo "== dime demo: alice@a.test writes to bob@b.test; what each hop sees"
"$dime" demo
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
config="$dir/dime.toml"
if [ ! -f "$config" ]; then
  echo "== dime init: a demonstration dark domain, $domain, in $dir"
  "$dime" init --domain "$domain" --dir "$dir"
  # DMTP's port 26 needs root; the demonstration relay listens on an unprivileged loopback port.
  sed -i 's|^listen = "inet:127.0.0.1:26"|listen = "inet:127.0.0.1:2626"|' "$config"
  "$dime" user add "postmaster@$domain" --config "$config"
fi
echo
echo "== the _dx TXT record to publish for $domain (DNSSEC-signed):"
"$dime" keys record --config "$config"
echo
echo "== dime start: the sidecar on $config (Ctrl-C stops it; /healthz and /metrics on 127.0.0.1:9464)"
exec "$dime" start --config "$config"
