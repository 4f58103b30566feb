#!/bin/sh
# Wait for the frontend, then create the namespace and the engine's search attributes (idempotent).
set -eu
address="${TEMPORAL_ADDRESS:?}"
namespace="${TEMPORAL_NAMESPACE:-default}"
i=0
until temporal operator cluster health --address "$address" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 90 ]; then echo "Temporal at $address not healthy after 180s" >&2; exit 1; fi
  sleep 2
done
temporal operator namespace describe --namespace "$namespace" --address "$address" >/dev/null 2>&1 \
  || temporal operator namespace create --namespace "$namespace" --retention "${TEMPORAL_RETENTION:-30d}" --address "$address"
# Keep in step with dunning/search_attributes.py (tests/deploy checks it).
for attribute in DunningStage:Keyword DunningCustomerId:Keyword DunningAmountDue:Int DunningCurrency:Keyword DunningDeclineClass:Keyword; do
  name="${attribute%%:*}"
  type="${attribute##*:}"
  if temporal operator search-attribute list --namespace "$namespace" --address "$address" | grep -q "^ *$name "; then
    echo "search attribute $name exists"
  else
    i=0
    # A new namespace takes a moment to accept search attributes.
    until temporal operator search-attribute create --namespace "$namespace" --address "$address" --name "$name" --type "$type"; do
      i=$((i + 1))
      if [ "$i" -ge 15 ]; then echo "cannot create search attribute $name" >&2; exit 1; fi
      sleep 2
    done
  fi
done
echo "namespace $namespace ready"
