#!/usr/bin/env bash
# Starts PostgreSQL and Redis on 127.0.0.1 when they are not answering (installing them with apt-get
# when they are missing and we are root). Safe to run any number of times; exits non-zero if a
# service stays down.
set -u
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "services: installing $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  fi
}

if ! pg_up; then
  command -v pg_ctlcluster >/dev/null 2>&1 || install postgresql
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    echo "services: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
fi
if ! redis_up; then
  command -v redis-server >/dev/null 2>&1 || install redis-server
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/tagger.log || true
  fi
fi
for _ in $(seq 1 30); do
  if pg_up && redis_up; then echo "services: PostgreSQL and Redis are up"; exit 0; fi
  sleep 1
done
echo "services: PostgreSQL up: $(pg_up && echo yes || echo no); Redis up: $(redis_up && echo yes || echo no)" >&2
exit 1
