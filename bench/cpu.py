"""CPU used by other processes during a run (the machine is shared: builds and tests of
other work disturb a benchmark). `cpu.py snap POSTMASTER_PID` prints a snapshot;
`cpu.py diff BEFORE AFTER` prints the CPU seconds of processes other than the cluster's and
pgbench between the two, and the top consumers. Processes that start and end between the
snapshots are not seen: a lower bound."""
import os, sys

HZ = os.sysconf("SC_CLK_TCK")

def procs():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            s = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        # fields after comm: state ppid ... utime(12) stime(13) ... starttime(20)
        out[int(d)] = (comm, int(f[1]), int(f[11]) + int(f[12]), int(f[19]))
    return out

if sys.argv[1] == "snap":
    pm = int(sys.argv[2])
    for pid, (comm, ppid, ticks, start) in procs().items():
        ours = pid == pm or ppid == pm or comm == "pgbench" or pid == os.getpid()
        print(pid, start, ticks, int(ours), comm.replace(" ", "_"))
else:
    def load(p):
        r = {}
        for line in open(p):
            pid, start, ticks, ours, comm = line.split()
            r[(pid, start)] = (int(ticks), ours == "1", comm)
        return r
    a, b = load(sys.argv[2]), load(sys.argv[3])
    used = {}
    for k, (t, ours, comm) in b.items():
        if ours or comm == "python3":
            continue
        d = t - a.get(k, (0,))[0]
        if d > 0:
            used[comm] = used.get(comm, 0) + d
    top = sorted(used.items(), key=lambda x: -x[1])[:3]
    print(f"{sum(used.values()) / HZ:.1f}\t" + (",".join(f"{c}:{t / HZ:.1f}" for c, t in top) or "-"))
