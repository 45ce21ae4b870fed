#!/usr/bin/env bash
# The throughput baseline users would write instead of the daemon: for each CSV file in
# DIR, one after another, create a bulk job with curl, then poll its status with curl
# until the job ends.
#
#     bash bench/curl_loop.sh http://127.0.0.1:PORT/elements/api-v2 DIR
set -euo pipefail
base=$1
dir=$2
auth='Authorization: User u, Element e'
for f in "$dir"/*.csv; do
    name=${f##*/}
    answer=$(curl -sS -F "file=@$f" -H "$auth" "$base/hubs/marketing/bulk/contact?path=/$name")
    id=$(printf '%s' "$answer" | sed -E 's/.*"id": *"?([0-9]+)"?.*/\1/')
    while :; do
        status=$(curl -sS -H "$auth" "$base/hubs/marketing/bulk/$id/status")
        case $status in
            *'"COMPLETED"'*) break ;;
            *'"ERROR"'* | *'"FAILED"'* | *'"ABORTED"'* | *'"CANCELLED"'*)
                echo "job $id for $name: $status" >&2; exit 1 ;;
        esac
        sleep 0.05
    done
done
