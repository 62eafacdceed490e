"""Measure bulk frees in a guest (docs/bulk-frees.md): kprobes on kmem_cache_free_bulk
(count + 152 pointer slots), kmem_cache_alloc_bulk and kmem_cache_alloc* (cache name)
beside the kmem tracepoints, in a private instance (hash-ptr off), around a workload:
$WORK (shell), default the 1000-thread program (build it: gcc -O2 -pthread -o threads
threads.c).  Writes trace.txt, formats, slabinfo before/after/settled (SETTLE seconds)
to $FTSLAB_VM_RESULTS (or argv[2]); analyze.py reads them.  For a throw-away guest:

    python3 tests/vm/vmrun.py -k 6.1 -r OUT -- 'python3 bench/bulkfree/measure.py 1000'
"""
import os, subprocess, sys, time, re
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from ftslab.kernel import btf
T = "/sys/kernel/tracing"
out = sys.argv[2] if len(sys.argv) > 2 else os.environ["FTSLAB_VM_RESULTS"]
n = sys.argv[1]
def w(path, s, append=False):
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, s.encode())
    except OSError as e:
        print("WRITE FAIL", path, s, e, open(T + "/error_log").read()[-400:])
        raise
    finally:
        os.close(fd)
b = btf.parse(open("/sys/kernel/btf/vmlinux", "rb").read())
offs = btf.kmem_cache_offsets(b)
print("offsets", offs)
NO = offs["name"]
ks = open("/proc/kallsyms").read()
syms = {l.split()[2] for l in ks.splitlines() if l.split()[1] in "tT"}
interesting = sorted(s for s in syms if re.search(r"bulk|free_rcu|mt_free|ma_free|sheaf|kvfree_rcu|kfree_rcu", s))
open(out + "/syms.txt", "w").write("\n".join(interesting) + "\n")
print("bulk-ish symbols:", " ".join(interesting))
readme = open(T + "/README").read()
m = re.search(r"\[(\d+)\]", readme)
print("README array:", [l for l in readme.splitlines() if "[" in l and ("type" in l.lower() or "array" in l.lower())][:5])
G = "bulkm"
defs = []
def add(kind, ev, sym, args):
    if sym in syms:
        defs.append(f"{kind}:{G}/{ev} {sym} {args}")
cn = f"+0(+{NO}(%di)):string"
for sym in ("kmem_cache_free_bulk", "kfree_bulk", "__kmem_cache_free_bulk"):
    add("p", "fb_" + sym.strip("_"), sym, f"name={cn} cnt=%si:u64 caller=$stack0:symbol " + " ".join(f"p{i}=+{8*i}(%dx):x64" for i in range(32)))
    add("p", "fc_" + sym.strip("_"), sym, f"name={cn} cnt=%si:u64 caller=$stack0:symbol " + " ".join(f"p{i}=+{8*i}(%dx):x64" for i in range(32, 152)))
for sym in ("kmem_cache_alloc_bulk", "kmem_cache_alloc_bulk_noprof"):
    add("p", "ab_" + sym, sym, f"name={cn} cnt=%dx:u64 caller=$stack0:symbol")
for sym in ("kmem_cache_alloc", "kmem_cache_alloc_noprof", "kmem_cache_alloc_lru", "kmem_cache_alloc_lru_noprof", "kmem_cache_alloc_node", "kmem_cache_alloc_node_noprof"):
    add("p", "a_" + sym, sym, f"name={cn} caller=$stack0:symbol")
for sym in ("kvfree_rcu_bulk", "mt_free_bulk", "ma_free_rcu", "mt_free_rcu", "kfree_rcu_work", "kmem_cache_free_bulk.part.0"):
    if sym in syms:
        defs.append(f"p:{G}/x_{sym.replace('.', '_')} {sym} caller=$stack0:symbol")
open(out + "/defs.txt", "w").write("\n".join(defs) + "\n")
ok = []
inst = T + "/instances/" + G
os.mkdir(inst)
try:
    ok = []
    for d in defs:
        try:
            w(T + "/kprobe_events", d + "\n", append=True)
            ok.append(d)
        except OSError:
            if "/x_" not in d:
                raise
    defs[:] = ok
    w(inst + "/buffer_size_kb", "32768")
    if os.path.exists(inst + "/options/hash-ptr"):
        w(inst + "/options/hash-ptr", "0")
    else:
        print("no hash-ptr option")
    fmts = {}
    for ev in ("kmem_cache_alloc", "kmem_cache_free", "kfree", "kmalloc"):
        w(inst + f"/events/kmem/{ev}/enable", "1")
        fmts[ev] = open(T + f"/events/kmem/{ev}/format").read()
    for d in defs:
        ev = d.split()[0].split("/")[1]
        if ev.startswith("fc_"):
            w(inst + f"/events/{G}/{ev}/filter", "cnt > 32")
        w(inst + f"/events/{G}/{ev}/enable", "1")
        fmts[ev] = open(T + f"/events/{G}/{ev}/format").read()
    open(out + "/formats.txt", "w").write("\n".join(f"== {k}\n{v}" for k, v in fmts.items()))
    s0 = open("/proc/slabinfo").read()
    w(inst + "/trace", "")
    w(inst + "/tracing_on", "1")
    t0 = time.time()
    subprocess.run(["sh", "-c", os.environ.get("WORK", os.path.join(HERE, "threads") + " " + n)], check=True)
    t1 = time.time()
    s1 = open("/proc/slabinfo").read()
    time.sleep(float(os.environ.get("SETTLE", "3")))
    s2 = open("/proc/slabinfo").read()
    w(inst + "/tracing_on", "0")
    print(f"workload {t1-t0:.2f}s")
    open(out + "/slab0.txt", "w").write(s0)
    open(out + "/slab1.txt", "w").write(s1)
    open(out + "/slab2.txt", "w").write(s2)
    import shutil
    with open(inst + "/trace") as f, open(out + "/trace.txt", "w") as g:
        shutil.copyfileobj(f, g)
    for c in range(os.cpu_count()):
        print("cpu", c, open(inst + f"/per_cpu/cpu{c}/stats").read().replace("\n", "; ")[:200])
finally:
    for d in defs:
        ev = d.split()[0].split("/")[1]
        try: w(inst + f"/events/{G}/{ev}/enable", "0")
        except OSError: pass
    for ev in ("kmem_cache_alloc", "kmem_cache_free", "kfree", "kmalloc"):
        try: w(inst + f"/events/kmem/{ev}/enable", "0")
        except OSError: pass
    os.rmdir(inst)
    for d in defs:
        if d in ok: w(T + "/kprobe_events", "-:" + d.split()[0].split(":")[1] + "\n", append=True)
print("done")
