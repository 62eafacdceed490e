"""Counts from a measure.py results directory (argv[1]): see docs/bulk-frees.md."""
import re, sys, collections
d = sys.argv[1]
def P(x):
    x = x.strip('"')
    try: return int(x, 16)
    except ValueError: return x
LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$")
KV = re.compile(r'(\w+)=("[^"]*"|\{[^}]*\}|\S+)')
ev = collections.Counter()
pending = {}  # cpu -> name from kprobe a_*
allocs = {}   # ptr -> (name, callsite)
live = {}     # ptr -> name (alloc'd, traced, not yet freed)
per_obj_free = collections.Counter(); unmatched_free = collections.Counter()
bulk_objs = collections.Counter(); bulk_calls = collections.Counter(); bulk_callers = collections.Counter()
bulk_sizes = collections.Counter()
ab_objs = collections.Counter(); ab_calls = collections.Counter()
tp_alloc = collections.Counter(); tp_alloc_sites = collections.Counter()
kp_alloc = collections.Counter()
bulk_freed_traced = collections.Counter()
maxcnt = 0
for line in open(d + "/trace.txt"):
    if line.startswith("#"): continue
    m = LINE.match(line)
    if not m: continue
    cpu, e, rest = m.group(3), m.group(5), m.group(6)
    ev[e] += 1
    kv = dict(KV.findall(rest))
    if e.startswith("a_"):
        pending[cpu] = kv.get("name", "").strip('"'); kp_alloc[pending[cpu]] += 1
    elif e == "kmem_cache_alloc":
        name = kv.get("name", "").strip('"') or pending.pop(cpu, "?")
        ptr = P(kv["ptr"]); site = kv["call_site"].split("+")[0]
        tp_alloc[name] += 1
        if name == "maple_node": tp_alloc_sites[site] += 1
        live[ptr] = name
    elif e == "kmalloc":
        live[P(kv["ptr"])] = "kmalloc"
    elif e in ("kmem_cache_free", "kfree"):
        ptr = P(kv["ptr"])
        name = live.pop(ptr, None)
        if name is None and e == "kfree" and P(kv["ptr"]) in (0, 0x10): continue
        if name is None: unmatched_free[kv.get("name", e).strip('"')] += 1
        else: per_obj_free[name] += 1
    elif e.startswith(("fb_", "fc_")):
        name = kv["name"].strip('"'); cnt = int(kv["cnt"]); maxcnt = max(maxcnt, cnt)
        first = e.startswith("fb_")
        if first:
            bulk_calls[name] += 1; bulk_objs[name] += cnt; bulk_callers[(name, kv["caller"].split("+")[0])] += cnt
            bulk_sizes[cnt] += 1
        ps = [kv[f"p{i}"] for i in range(1000) if f"p{i}" in kv and i < cnt]
        for p in ps:
            nm = live.pop(P(p), None)
            if nm: bulk_freed_traced[nm] += 1
    elif e.startswith("ab_"):
        name = kv["name"].strip('"'); ab_calls[name] += 1; ab_objs[name] += int(kv["cnt"])
def slab(f):
    out = {}
    for l in open(f):
        p = l.split()
        if len(p) > 2 and not l.startswith(("slabinfo", "#")): out[p[0]] = int(p[1])
    return out
s0, s1, s2 = slab(d + "/slab0.txt"), slab(d + "/slab1.txt"), slab(d + "/slab2.txt")
print("events:", dict(ev))
for c in ("maple_node", "vm_area_struct", "task_struct", "pid"):
    print(f"{c}: kprobe-alloc(single) {kp_alloc[c]}, tp kmem_cache_alloc {tp_alloc[c]}, bulk-alloc calls {ab_calls[c]} objs {ab_objs[c]}, "
          f"per-object frees paired {per_obj_free[c]}, bulk-free calls {bulk_calls[c]} objs {bulk_objs[c]}, traced allocs freed in bulk (slots 0-151) {bulk_freed_traced[c]}, "
          f"traced still live {sum(1 for v in live.values() if v == c)}; slabinfo active {s0.get(c)} -> {s1.get(c)} (exit) -> {s2.get(c)} (settled) delta {s2.get(c,0)-s0.get(c,0)}")
print("unmatched per-object frees by name:", unmatched_free.most_common(8))
print("bulk frees by (cache, caller):", bulk_callers.most_common(12))
print("bulk count histogram:", sorted(bulk_sizes.items())[:40], "max", maxcnt)
print("maple_node tp alloc call sites:", tp_alloc_sites.most_common(6))
print("bulk_freed_traced:", bulk_freed_traced.most_common(8))
