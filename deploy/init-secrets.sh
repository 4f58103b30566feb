#!/bin/sh
# Create deploy/secrets/* for the compose stack (once; existing files are kept). Never commit them.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-32; }
keep_or_write() {  # keep_or_write NAME VALUE
  if [ -s "secrets/$1" ]; then echo "secrets/$1 kept"; else printf '%s\n' "$2" > "secrets/$1"; echo "secrets/$1 created"; fi
}
keep_or_write temporal_db_password "$(random)"
keep_or_write store_db_password "$(random)"
keep_or_write store_database_url "postgresql+psycopg://dunning:$(cat secrets/store_db_password)@store-db:5432/dunning"
keep_or_write dunning_api_token "$(random)"
# The first key encrypts; add new keys at the top to rotate, keep old ones while histories need them.
keep_or_write dunning_codec_keys "k$(date -u +%Y%m%d):$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
keep_or_write grafana_admin_password "$(random)"
