#!/usr/bin/env bash
# PostgreSQL 15 for Dagster's instance storage on this machine (the `postgres` tests, or a local
# deployment-shaped Dagster): start the cluster, then create the role and database that
# deploy/dagster-postgres.yaml reads from DAGSTER_PG_*. Idempotent; run as root (CI is root).
set -euo pipefail
user="${DAGSTER_PG_USERNAME:-clickstream}"
password="${DAGSTER_PG_PASSWORD:-clickstream}"
database="${DAGSTER_PG_DB:-clickstream}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deploy/postgres-setup.sh needs root (pg_ctlcluster, and psql as postgres): sudo $0" >&2
  exit 1
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
pg_lsclusters -h | grep -q '^15 \+main ' || pg_createcluster 15 main >/dev/null
pg_lsclusters -h | grep -q '^15 \+main .*online' || pg_ctlcluster 15 main start
as_postgres() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(as_postgres -c "select 1 from pg_roles where rolname = '$user'")" != 1 ]; then
  # CREATEDB: the tests give each scenario a database of its own.
  as_postgres -c "create role \"$user\" login createdb password '$password'"
fi
if [ "$(as_postgres -c "select 1 from pg_database where datname = '$database'")" != 1 ]; then
  as_postgres -c "create database \"$database\" owner \"$user\""
fi
echo "PostgreSQL 15 on 127.0.0.1:5432: role $user, database $database"
