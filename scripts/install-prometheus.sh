#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package) when promtool is missing and we are
# root: the alert rules' tests and the monitoring acceptance test run the real tools. Safe to run any
# number of times; without root or apt-get it does nothing (those tests then skip, saying why).
set -u
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: promtool missing and cannot install it (not root, or no apt-get)" >&2
  exit 0
fi
echo "install-prometheus: installing prometheus (with promtool)"
# The package would start its own server where an init system runs; the tests start their own.
policy=/usr/sbin/policy-rc.d
added=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && added=1
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
status=$?
[ -n "$added" ] && rm -f "$policy"
exit $status
