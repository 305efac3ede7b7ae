#!/usr/bin/env bash
# Make sure the services the test suite talks to are up on their standard ports.
# Starts stopped ones; on a machine without them, installs them from Debian packages when run as root.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {  # port name
  for _ in $(seq 1 60); do up "$1" && return 0; sleep 0.5; done
  echo "services: $2 did not come up on port $1" >&2; return 1
}

ensure() {  # port name debian-package start-command...
  local port=$1 name=$2 pkg=$3; shift 3
  if up "$port"; then echo "services: $name up on $port"; return 0; fi
  if ! command -v "${1%% *}" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "services: installing $pkg"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg") >/dev/null 2>&1 \
      || echo "services: could not install $pkg" >&2
  fi
  echo "services: starting $name"
  eval "$*" >/dev/null 2>&1 || true
  wait_up "$port" "$name"
}

rc=0
ensure 5432 postgresql postgresql \
  'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start' || rc=1
ensure 5672 rabbitmq rabbitmq-server 'rabbitmq-server -detached' || rc=1
ensure 1883 mosquitto mosquitto 'mosquitto -d -c /etc/mosquitto/mosquitto.conf' || rc=1
ensure 6379 redis redis-server \
  'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no' || rc=1
ensure 4222 nats nats-server \
  'start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js' || rc=1
if [ "$rc" != 0 ] && [ "${CI:-}" = "true" ]; then
  echo "services: some services are missing (see above); tests that need them will fail" >&2
fi
exit 0
