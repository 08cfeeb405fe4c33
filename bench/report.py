"""Summarises bench/run.sh's raw results (one line per pgbench run) as markdown."""
import os, statistics as st, sys
from collections import defaultdict

results, loops, sanity = sys.argv[1:4]
E = os.environ
ORDER = ["debit8", "debit32", "hot8", "hot64", "rs", "usage", "ingest", "access", "rls", "batch100", "batch1000"]
BATCH = {"batch100": 100, "batch1000": 1000}   # items per call: reported in items per second
TITLE = {
    "debit8": "uniform debit, 8 clients", "debit32": "uniform debit, 32 clients",
    "hot8": "hot customer, 8 clients", "hot64": "hot customer, 64 clients",
    "rs": "reserve + settle pair, 8 clients", "usage": "record_usage, 8 clients",
    "ingest": "webhook ingest, 8 clients", "access": "can_access, 8 clients",
    "rls": "RLS-filtered SELECT, 8 clients",
    "batch100": "batches of 100, 8 clients (calls/s)", "batch1000": "batches of 1,000, 8 clients (calls/s)",
}
runs = defaultdict(list)
for line in open(results):
    w, c, rnd, tps, n, p50, p99, wal, fpi, status, other, top = line.rstrip("\n").split("\t")
    runs[(w, c)].append(dict(tps=float(tps), n=int(n), p50=p50, p99=p99, wal=float(wal), fpi=float(fpi or 0),
                             status=status, other=float(other or 0), top=top))

def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None

def ratio(a, b):
    return a / b if a and b else None

def f(x, fmt="{:,.0f}"):
    return "–" if x is None else fmt.format(x)

BUSY = 0.125 * float(E.get("DURATION", "8"))   # other processes took >= 1/8 of a core
summary = {}
for (w, c), rs in runs.items():
    num = lambda k: [float(r[k]) for r in rs if r[k] != "NA"]
    summary[(w, c)] = dict(
        tps=med([r["tps"] for r in rs]), p50=med(num("p50")), p99=med(num("p99")),
        wal=med([r["wal"] / r["n"] for r in rs if r["n"] > 0]),
        walrec=med([(r["wal"] - r["fpi"]) / r["n"] for r in rs if r["n"] > 0]),
        all=" / ".join(f"{r['tps']:,.0f}" + ("*" if r["other"] >= BUSY else "") for r in rs),
        bad=[r["status"] for r in rs if r["status"] != "ok"])

out = []
p = out.append
p(f"billing {E.get('EXTVER')} (git {E.get('REV')}), release build; {E.get('MACHINE')}; "
  f"{E.get('ROUNDS')} rounds x {E.get('DURATION')} s per run, interleaved; shared_buffers={E.get('SHARED_BUFFERS')}, "
  f"fsync=on, synchronous_commit=on, -M prepared, CHECKPOINT before each run; suite took {int(E.get('ELAPSED', 0)) // 60} min {int(E.get('ELAPSED', 0)) % 60} s")
allruns = [r for rs in runs.values() for r in rs]
busy = [r for r in allruns if r["other"] >= BUSY]
p(f"* = other processes on the machine used >= {BUSY:.1f} CPU-s during that run (of {2 * float(E.get('DURATION', '8')):.0f} available); "
  f"{len(busy)} of {len(allruns)} runs" + (f", e.g. {max(busy, key=lambda r: r['other'])['top']}" if busy else ""))
if E.get("SQL_OK") != "same":
    p("WARNING: the installed billing SQL script differs from the build's (a concurrent install?)")
p("")
p("| workload | contender | median tps | vs floor | vs PL/pgSQL | p50 ms | p99 ms | WAL B/op | of which not FPI | tps of each round |")
p("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for w in ORDER:
    cs = [c for (ww, c) in summary if ww == w]
    if not cs:
        continue
    cs.sort(key=lambda c: ["billing", "slotted", "slotted64", "inbox", "usage", "floor", "floor_fn", "plpgsql"].index(c))
    fl, pl = summary.get((w, "floor")), summary.get((w, "plpgsql"))
    for c in cs:
        s = summary[(w, c)]
        rf = s["tps"] / fl["tps"] if fl and fl["tps"] and c != "floor" else None
        rp = s["tps"] / pl["tps"] if pl and pl["tps"] and c not in ("plpgsql", "floor", "floor_fn") else None
        bad = f" ({', '.join(s['bad'])})" if s["bad"] else ""
        p(f"| {TITLE[w]} | {c} | {f(s['tps'])} | {f(rf, '{:.2f}x')} | {f(rp, '{:.2f}x')} | {f(s['p50'], '{:.2f}')} "
          f"| {f(s['p99'], '{:.2f}')} | {f(s['wal'])} | {f(s['walrec'])} | {s['all']}{bad} |")

# Batches: items per second (calls/s x items per call), against the single call's floor
# (debit8's, one debit per transaction) and the PL/pgSQL peer's loop over pl_debit.
if any(w in BATCH for (w, _) in summary):
    fl1 = summary.get(("debit8", "floor"))
    one = summary.get(("debit8", "billing"))
    p("")
    p("Batches, in items per second (median calls/s x items per call); the single-call floor is debit8's floor"
      + (f" ({fl1['tps']:,.0f} tps)" if fl1 else " (not run: add debit8)")
      + (f", billing.debit at {one['tps']:,.0f} tps" if one else "") + ":")
    p("")
    p("| batch | contender | items/s | vs single-call floor | vs billing.debit | vs PL/pgSQL loop | p50 ms per call |")
    p("|---|---|---:|---:|---:|---:|---:|")
    label = {"billing": "billing.debit_many", "usage": "billing.record_usage_many", "plpgsql": "PL/pgSQL loop (peer.pl_debit_many)"}
    for w, n in BATCH.items():
        pl = summary.get((w, "plpgsql"))
        for c in ["billing", "usage", "plpgsql"]:
            s = summary.get((w, c))
            if not s:
                continue
            items = s["tps"] * n
            rp = items / (pl["tps"] * n) if pl and pl["tps"] and c != "plpgsql" else None
            p(f"| {n:,} | {label[c]} | {f(items)} | {f(ratio(items, fl1['tps'] if fl1 else None), '{:.1f}x')} "
              f"| {f(ratio(items, one['tps'] if one else None), '{:.1f}x')} | {f(rp, '{:.2f}x')} | {f(s['p50'], '{:.1f}')} |")

loop = defaultdict(list)
if os.path.exists(loops):
    for line in open(loops):
        k, ms = line.split("\t")
        if ms.strip():
            loop[k].append(float(ms))
calls = int(E.get("LOOP_CALLS", "1000000"))
us = {}
if loop:
    p("")
    p(f"can_access in a loop of {calls:,} calls (median ms of {len(loop['base_one'])} reps, minus the same loop without the call):")
    for k, base, label in [("can_access_one", "base_one", "billing.can_access, one customer (c1)"),
                           ("can_access_rot", "base_rot", "billing.can_access, 10,000 customers in turn"),
                           ("plpgsql_rot", "base_rot", "PL/pgSQL peer, 10,000 customers in turn")]:
        if loop.get(k) and loop.get(base):
            us[k] = (med(loop[k]) - med(loop[base])) * 1000 / calls
            p(f"- {label}: {med(loop[k]):,.0f} ms - {med(loop[base]):,.0f} ms = **{us[k]:.2f} µs per call**")

def get(w, c, k="tps"):
    s = summary.get((w, c))
    return s[k] if s else None

p("")
p("Targets of issues 6 and 21:")
def target(label, value, goal, ok):
    state = "–" if value is None else ("MET" if ok(value) else "NOT MET")
    p(f"- {label}: {f(value, '{:.2f}')} (target {goal}) — {state}")
target("uniform debit 8 clients, billing / floor", ratio(get("debit8", "billing"), get("debit8", "floor")), ">= 0.9x", lambda v: v >= 0.9)
target("uniform debit 8 clients, billing / PL/pgSQL", ratio(get("debit8", "billing"), get("debit8", "plpgsql")), ">= 1.1x", lambda v: v >= 1.1)
target("hot customer 8 clients, billing / single-row floor", ratio(get("hot8", "billing"), get("hot8", "floor")), ">= 1.0x", lambda v: v >= 1.0)
target("hot customer 8 clients, slotted (16 slots) / single-row floor", ratio(get("hot8", "slotted"), get("hot8", "floor")), ">= 2.5x", lambda v: v >= 2.5)
target("hot customer 8 clients, slotted (64 slots) / single-row floor", ratio(get("hot8", "slotted64"), get("hot8", "floor")), ">= 2.5x", lambda v: v >= 2.5)
target("hot customer 64 clients, billing / single-row floor", ratio(get("hot64", "billing"), get("hot64", "floor")), ">= 1.0x", lambda v: v >= 1.0)
target("hot customer 64 clients, slotted (16 slots) / single-row floor", ratio(get("hot64", "slotted"), get("hot64", "floor")), ">= 1.0x", lambda v: v >= 1.0)
target("hot customer 64 clients, slotted (64 slots) / single-row floor", ratio(get("hot64", "slotted64"), get("hot64", "floor")), ">= 1.0x", lambda v: v >= 1.0)
target("ingest, billing.ingest / INSERT ON CONFLICT floor", ratio(get("ingest", "billing"), get("ingest", "floor")), ">= 0.8x", lambda v: v >= 0.8)
target("ingest, inbox INSERT / INSERT ON CONFLICT floor", ratio(get("ingest", "inbox"), get("ingest", "floor")), ">= 0.8x", lambda v: v >= 0.8)
target("can_access µs per call in a loop (10,000 customers)", us.get("can_access_rot"), "< 20 µs", lambda v: v < 20)
target("WAL per debit (uniform, 8 clients), billing / floor", ratio(get("debit8", "billing", "wal"), get("debit8", "floor", "wal")), "<= 1.3x", lambda v: v <= 1.3)
target("WAL per debit without full-page images, billing / floor", ratio(get("debit8", "billing", "walrec"), get("debit8", "floor", "walrec")), "<= 1.3x", lambda v: v <= 1.3)
for n, w in [(100, "batch100"), (1000, "batch1000")]:
    items = get(w, "billing")
    items = items * n if items else None
    target(f"debit_many, batches of {n:,}: items/s / single-call floor tps", ratio(items, get("debit8", "floor")), ">= 5x (stretch 10x)", lambda v: v >= 5)
    pl = get(w, "plpgsql")
    target(f"debit_many, batches of {n:,}: items/s / PL/pgSQL loop items/s", ratio(items, pl * n if pl else None), "> 1x", lambda v: v > 1)
fn = ratio(get("debit8", "floor_fn"), get("debit8", "floor"))
if fn:
    p(f"- for reference: the floor's statement inside a SECURITY DEFINER PL/pgSQL function / the floor: {fn:.2f}x"
      " (what being a function costs before any logic; no target)")
p("")
p("Sanity: " + "; ".join(l.strip() for l in open(sanity) if l.strip()))
print("\n".join(out))
