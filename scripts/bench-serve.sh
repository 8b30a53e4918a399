#!/usr/bin/env bash
# bench-serve.sh -- does watching a job slow it? One 4 GiB offline copy through `vmshift
# serve` with the service idle, then the same copy while 50 SSE clients follow it and one
# client polls GET /api/v1/jobs 20 times a second; in turns, ROUNDS times. Prints each
# copy's throughput (from its report) and the ratio loaded/idle (after one warm-up copy). Then it keeps copying
# with the clients attached for DURATION seconds and samples the service's RSS every 10 s:
# the first, largest and last sample tell whether memory stays flat.
#
#   scripts/bench-serve.sh [SIZE_MIB (default 4096)] [ROUNDS (default 2)] [DURATION_S (default 600)]
#
# Needs python3 and a release build of vmshift (built here). Not part of CI.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-4096}
rounds=${2:-2}
duration=${3:-600}
cargo build --release --quiet --bin vmshift --manifest-path "$repo/Cargo.toml"
vm="$repo/target/release/vmshift"
root=$(mktemp -d /var/tmp/vmshift-bench-serve.XXXXXX)
svc=""
trap '[ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; rm -rf "$root"' EXIT
mkdir -p "$root/store/a" "$root/store/b"
token=bench-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
(umask 077; echo "bench operate $token" > "$root/tokens")
printf 'listen = "127.0.0.1:0"\ntokens = "%s"\ndatastores = ["%s"]\n' "$root/tokens" "$root/store" > "$root/config.toml"
# A fully allocated image: every byte is data the engine must copy.
qemu-img create -q -f raw "$root/store/a/disk.raw" "${size}M"
# qemu-io refuses one request over 2 GiB: write it in 1 GiB pieces.
writes=()
for ((off = 0; off < size; off += 1024)); do
  len=$(( size - off < 1024 ? size - off : 1024 ))
  writes+=(-c "write -P 0x5a ${off}M ${len}M")
done
qemu-io -f raw "${writes[@]}" "$root/store/a/disk.raw" >/dev/null
VMSHIFT_STATE_DIR="$root/state" "$vm" --config "$root/config.toml" serve 2> "$root/serve.log" &
svc=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$root/serve.log" && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$root/serve.log" | head -1)
echo "bench-serve: service pid $svc at $base; image ${size} MiB"

python3 - "$base" "$token" "$root" "$rounds" "$duration" "$svc" <<'PY'
import json, sys, threading, time, urllib.request, os
base, token, root, rounds, duration, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
H = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, headers=H,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")

def rss_kib():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])

def copy():
    target = f"{root}/store/b/disk.raw"
    if os.path.exists(target):
        os.remove(target)
    job = call("POST", "/api/v1/jobs", {"kind": "offline", "source": f"{root}/store/a/disk.raw", "to": f"{root}/store/b/"})
    return job["job_id"]

def wait(job_id):
    while True:
        j = call("GET", f"/api/v1/jobs/{job_id}")
        if j["status"] not in ("running",):
            r = j.get("report")
            assert r is not None, f"job {job_id} ended {j['status']} without a report: {j.get('error')}"
            assert r["verification"]["result"] == "match", r
            return r["throughput_bytes_per_sec"]
        time.sleep(0.2)

stop = threading.Event()
def follower(job_id, counts):
    req = urllib.request.Request(base + f"/api/v1/jobs/{job_id}/events", headers=H)
    n = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: "):
                n += 1
    counts.append(n)

def poller():
    while not stop.is_set():
        call("GET", "/api/v1/jobs")
        time.sleep(0.05)

def loaded_copy():
    job_id = copy()
    counts = []
    ts = [threading.Thread(target=follower, args=(job_id, counts)) for _ in range(50)]
    for t in ts: t.start()
    rate = wait(job_id)
    for t in ts: t.join()
    return rate, min(counts) if counts else 0

MiB = 1 << 20
idle_rates, loaded_rates = [], []
stop.clear()
# A first copy onto the fresh file system runs faster than every later one: warm up.
wait(copy())
for i in range(rounds):
    r = wait(copy()); idle_rates.append(r)
    print(f"round {i+1}: idle   {r / MiB:8.1f} MiB/s", flush=True)
    p = threading.Thread(target=poller); stop.clear(); p.start()
    r, events = loaded_copy(); loaded_rates.append(r)
    stop.set(); p.join()
    print(f"round {i+1}: loaded {r / MiB:8.1f} MiB/s (50 SSE clients, each got >= {events} events; GET /jobs at 20/s)", flush=True)
idle, loaded = sum(idle_rates) / len(idle_rates), sum(loaded_rates) / len(loaded_rates)
ratios = sorted(l / i for l, i in zip(loaded_rates, idle_rates))
median = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
print(f"throughput loaded/idle: {loaded / idle:.3f} of the means, {median:.3f} median of the rounds' ratios {[round(r, 3) for r in ratios]} (goal >= 0.95)", flush=True)

samples = [rss_kib()]
t0 = time.time(); last = t0
p = threading.Thread(target=poller); stop.clear(); p.start()
copies = 0
while time.time() - t0 < duration:
    loaded_copy(); copies += 1
    if time.time() - last >= 10:
        samples.append(rss_kib()); last = time.time()
stop.set(); p.join()
samples.append(rss_kib())
# The service keeps its last 64 finished jobs in memory: RSS grows until then, then is flat.
warm = samples[min(len(samples) - 1, 7)]
print(f"rss over {int(time.time() - t0)} s and {copies} watched copies: first {samples[0] / 1024:.1f} MiB, after ~60 s {warm / 1024:.1f} MiB, max {max(samples) / 1024:.1f} MiB, last {samples[-1] / 1024:.1f} MiB ({len(samples)} samples)")
print("rss samples (MiB): " + " ".join(f"{x / 1024:.0f}" for x in samples))
PY
