#!/bin/bash
# Usage (root, from the repository root, after cargo build -p shadow-agent): bash docs/whatif-cost.sh
# Cost of the what-if second clone: iperf3 UDP 64 B client -> node (mirror) -> primary.
set -u
A=${SHADOW_AGENT:-target/debug/shadow-agent}
T=shdtc$$
CFG=$(mktemp /tmp/shdtcost.XXXXXX.toml)
ip netns add ${T}c; ip netns add ${T}n; ip netns add ${T}p
cleanup() { pkill -P $$ 2>/dev/null; sleep 1; ip netns del ${T}c; ip netns del ${T}n; ip netns del ${T}p; rm -f "$CFG"; }
trap cleanup EXIT
ip link add ${T}a netns ${T}c type veth peer name ${T}b netns ${T}n
ip link add ${T}d netns ${T}n type veth peer name ${T}e netns ${T}p
ip -n ${T}c addr add 198.19.37.1/24 dev ${T}a; ip -n ${T}n addr add 198.19.37.2/24 dev ${T}b
ip -n ${T}n addr add 198.19.38.1/24 dev ${T}d; ip -n ${T}p addr add 198.19.38.2/24 dev ${T}e
for x in "c ${T}a" "n ${T}b" "n ${T}d" "p ${T}e"; do set -- $x; ip -n ${T}$1 link set $2 up; done
ip -n ${T}c route add 198.19.38.2/32 via 198.19.37.2
ip -n ${T}p route add 198.19.37.1/32 via 198.19.38.1
ip netns exec ${T}n sysctl -qw net.ipv4.ip_forward=1
ip netns exec ${T}p iperf3 -s -D -1 >/dev/null 2>&1 || true
cat > "$CFG" <<EOC
[mirror]
interface = "${T}b"
[[mirror.rules]]
dst = "198.19.38.2/32"
proto = "udp"
[shadow]
name = "c$$"
command = ["sleep", "1000"]
addresses = ["198.19.38.2/24"]
cpu_cores = 0.5
[[shadow.whatif]]
name = "cand"
cpu_cores = 0.25
[profile]
interval_ms = 1000
EOC
measure() {
  ip netns exec ${T}p iperf3 -s -1 -D >/dev/null 2>&1; sleep 0.5
  ip netns exec ${T}c iperf3 -c 198.19.38.2 -u -l 64 -b 0 -t 5 -J 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin); s=j["end"]["sum"]; print("%.1f" % ((s["packets"]-s["lost_packets"])/s["seconds"]/1000))'
}
for round in 1 2 3; do
  echo "round $round none $(measure)"
  nsenter --net=/run/netns/${T}n $A run --config $CFG --duration 9 --json >/dev/null 2>&1 & P=$!; sleep 3
  echo "round $round one_mirror $(measure)"; wait $P
  nsenter --net=/run/netns/${T}n $A whatif --config $CFG --duration 9 >/dev/null 2>&1 & P=$!; sleep 3
  echo "round $round two_mirrors $(measure)"; wait $P
done
