#!/usr/bin/env bash
# First look at DIME on embedded defaults: the two-domain demo (what every hop sees), then a
# demonstration dark domain bootstrapped with the file keystore: organisation keys and signet, a user
# signed by the organisation, and the _dx TXT record to publish.
set -euo pipefail
domain="${1:-example.test}"
dir="${2:-dime-demo}"
dime="$(cd "$(dirname "$0")/.." && pwd)/bin/dime"
echo "== dime demo: alice@a.test writes to bob@b.test; what each hop sees"
"$dime" demo
mkdir -p "$dir" && cd "$dir"
user="postmaster@$domain"

[ -f "$domain.keys" ] || "$dime" keys generate --org "$domain" --out "$domain.keys"
"$dime" signet create --keys "$domain.keys" --domain "$domain" --name "Demo organisation" --force --out "$domain.signet"
[ -f "$user.keys" ] || "$dime" keys generate --user "$user" --out "$user.keys"
"$dime" signet request --keys "$user.keys" --force --out "$user.ssr"
"$dime" signet sign "$user.ssr" --org-keys "$domain.keys" --address "$user" --force --out "$user.signet"

pok="$("$dime" keys show "$domain.keys" --json | node -e 'process.stdin.on("data",d=>process.stdout.write(JSON.parse(d).signingKey))')"
echo
"$dime" signet verify "$domain.signet" --pok "$pok"
echo
"$dime" signet verify "$user.signet" --org "$domain.signet" --pok "$pok"
echo
echo "Publish this TXT record at _dx.$domain (DNSSEC-signed):"
"$dime" record generate --keys "$domain.keys" --policy experimental
echo
echo "Files are in $(pwd); the .keys files hold private keys (mode 0600)."
