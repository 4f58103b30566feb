#!/bin/sh
# Create Temporal's two PostgreSQL databases and bring their schemas up to date (idempotent).
set -eu
SQL_PASSWORD="$(cat /run/secrets/temporal_db_password)"
export SQL_PASSWORD
tool() {
  temporal-sql-tool --plugin postgres12 --ep "${POSTGRES_SEEDS}" -p "${DB_PORT:-5432}" -u "${POSTGRES_USER}" "$@"
}
for pair in temporal:temporal temporal_visibility:visibility; do
  database="${pair%%:*}"
  schema="${pair##*:}"
  tool --db "$database" create-database 2>/dev/null || echo "database $database exists"
  # setup-schema only on an empty database; update-schema applies whatever is missing.
  tool --db "$database" setup-schema -v 0.0 2>/dev/null || echo "schema of $database already set up"
  tool --db "$database" update-schema -d "/etc/temporal/schema/postgresql/v12/$schema/versioned"
done
