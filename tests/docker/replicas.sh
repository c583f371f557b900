# Sourced by tests/docker/e2e.sh once the single service has been proven and stopped (it uses
# e2e.sh's variables and functions: docker, container, PY, URL, tmp, log, fail, phase, the built
# images, the volume the trainer filled). Not a script of its own.
#
# docker-compose.replicas.yml on the real engine, with the docs' own commands: 3 replicas of the
# service behind nginx (the stand-in image built from Debian's nginx), then, under a steady load
# from 127.0.0.1 (tests/docker/load.py):
#   1. kill one replica (SIGKILL: no goodbye, its requests in flight cut);
#   2. publish a new version of `gap` while it is down (`trainer export gap`, the trainer's own
#      publish from its kept checkpoint);
#   3. start the killed replica again; it must come back serving the new version;
#   4. publish once more with every replica up.
# Passes when no request failed, every replica that was up answered each new version, and none
# answered an old one to a request sent more than POLL_SECONDS after the publish. Then the docs'
# scale-up to 5 replicas, each answering through nginx.

REPLICAS=3 # the docs' command below
POLL_SECONDS=2 # the service's default: docker-compose.yml does not set it
rcompose() { docker compose -f docker-compose.yml -f docker-compose.replicas.yml "$@"; }

wait_healthy() { # wait_healthy CONTAINER...: each one's Docker healthcheck says healthy
  local id state
  for id in "$@"; do
    for _ in $(seq 120); do
      state="$(command docker inspect -f '{{.State.Health.Status}}' "$id")"
      [[ "$state" == healthy ]] && break
      sleep 0.5
    done
    [[ "$state" == healthy ]] || fail "replica $id is not healthy after 60 s ($state)"
  done
}
address() { command docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
published_at() { # published_at: when the index (read inside a replica) named gap's version
  command docker exec "$1" python -c \
    'import json; e = json.load(open("/models/index.json"))["steps"]["gap"]; print(e["published_at"] + "," + e["version"])'
}
publish_gap() { # publish_gap: the trainer re-exports gap's kept checkpoint as a new version
  timeout 600 docker compose --profile cpu run --rm --no-deps trainer-cpu export gap </dev/null 2>&1 | grep -E "published|error" ||
    fail "trainer export gap failed"
}

replicas_start=$SECONDS
docker compose -f docker-compose.yml -f docker-compose.replicas.yml up -d --scale replica=3 lb
mapfile -t ids < <(rcompose ps -q replica)
((${#ids[@]} == REPLICAS)) || fail "${#ids[@]} replicas running, expected $REPLICAS"
wait_healthy "${ids[@]}"
lb="$(rcompose ps -q lb)"
[[ "$(rcompose port lb 8080)" == "127.0.0.1:$SERVICE_PORT" ]] ||
  fail "nginx published as $(rcompose port lb 8080), not on 127.0.0.1:$SERVICE_PORT"
for id in "${ids[@]}"; do
  [[ -z "$(command docker port "$id")" ]] || fail "replica $id publishes a port of its own"
  [[ "$(command docker exec "$id" id -u)" == 10001 ]] || fail "replica $id does not run as uid 10001"
  if command docker exec "$id" sh -c 'touch /models/.probe' 2>/dev/null; then fail "/models is writable in replica $id"; fi
done
echo "$REPLICAS replicas healthy, each uid 10001 with /models read-only and no port; nginx ($(command docker exec "$lb" nginx -v 2>&1)) on 127.0.0.1:$SERVICE_PORT"
for _ in $(seq 60); do
  [[ "$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$URL/readyz")" == 200 ]] && break
  sleep 0.5
done
seen="$(for _ in $(seq 30); do curl -fsS --max-time 5 -D - -o /dev/null "$URL/readyz" | tr -d '\r' | sed -n 's/^[Xx]-[Rr]eplica: //p'; done | sort -u | wc -l)"
((seen == REPLICAS)) || fail "30 requests through nginx reached $seen replicas, expected $REPLICAS"
echo "round robin: 30 requests through nginx reached all $seen replicas"

"$PY" tests/docker/load.py run --url "$URL" --png "$tmp/digit.png" --out "$log/load.jsonl" \
  --stop-file "$log/stop" --rate "${E2E_LOAD_RATE:-100}" --seconds 900 &
load_pid=$!
sleep 5

victim="${ids[0]}"
echo "kill -9 replica $(address "$victim") under load"
command docker kill "$victim" >/dev/null
sleep 3
publish_gap
publish_1="$(published_at "${ids[1]}"),$((REPLICAS - 1))"
sleep $((POLL_SECONDS + 3))

echo "start the killed replica again"
command docker start "$victim" >/dev/null
wait_healthy "$victim"
echo "replica back at $(address "$victim"), healthy"
sleep 5
publish_gap
publish_2="$(published_at "${ids[1]}"),$REPLICAS"
sleep $((POLL_SECONDS + 3))
touch "$log/stop"
wait "$load_pid" || fail "the load client failed"

for id in "${ids[@]}"; do
  command docker stats --no-stream --format "replica {{.Name}}: memory {{.MemUsage}}, cpu {{.CPUPerc}}" "$id"
done
"$PY" tests/docker/load.py report "$log/load.jsonl" --poll-seconds "$POLL_SECONDS" \
  --publish "$publish_1" --publish "$publish_2" || fail "the replicas did not pass under load"
echo "replicas: kill, restart and two publishes under load in $((SECONDS - replicas_start)) s"

# The docs' scale-up, and their prediction through nginx.
docker compose -f docker-compose.yml -f docker-compose.replicas.yml up -d --scale replica=5 lb
mapfile -t ids < <(rcompose ps -q replica)
((${#ids[@]} == 5)) || fail "${#ids[@]} replicas running after --scale replica=5"
wait_healthy "${ids[@]}"
seen="$(for _ in $(seq 40); do curl -fsS --max-time 5 -D - -o /dev/null "$URL/readyz" | tr -d '\r' | sed -n 's/^[Xx]-[Rr]eplica: //p'; done | sort -u | wc -l)"
((seen == 5)) || fail "40 requests through nginx reached $seen of 5 replicas"
(cd "$tmp" && curl -F file=@digit.png "$URL/predict/scheduler") >"$log/predict-lb.json" || fail "POST /predict/scheduler through nginx failed"
check_prediction "$log/predict-lb.json" scheduler 7
echo "scaled to 5 replicas, all healthy and reached through nginx"
# The docs' way back to the single service (`--profile cpu down` later would leave these two).
docker compose -f docker-compose.yml -f docker-compose.replicas.yml rm --stop --force lb replica
[[ -z "$(rcompose ps -a -q lb replica)" ]] || fail "the docs' rm left the replicas or nginx"
docker compose up -d service
