"""Recomputes the metrics of `sandstorm eval azure-vm-noise` from its --decisions file and the
raw measurements, independently of the Rust code: pyarrow, numpy and the standard library only.

usage: recompute_eval.py DATA_DIR DECISIONS.parquet SUITE[,SUITE...]   (prints JSON)
"""
import csv, json, math, sys, collections
import numpy as np
import pyarrow.parquet as pq

data, decisions, suites = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
hib = {r["unit"]: r["higher_is_better"] == "true" for r in csv.DictReader(open(f"{data}/units.csv"))}
price = {(r["vm_region"], r["vm_sku"]): float(r["price_usd_per_hour"]) for r in csv.DictReader(open(f"{data}/prices.csv"))}

m = pq.read_table(f"{data}/measurements.parquet",
                  filters=[("vm_lifespan", "=", "short"), ("test_suite", "in", suites)]).to_pydict()
buckets = collections.defaultdict(list)
for s, n, u, r, k, v, t in zip(m["test_suite"], m["test_name"], m["unit"], m["vm_region"], m["vm_sku"], m["value"], m["start_time"]):
    buckets[(s, n, u, t.date(), r, k)].append(v)
median = {key: float(np.median(v)) for key, v in buckets.items()}

d = pq.read_table(decisions).to_pydict()
ratios = collections.defaultdict(list)
for strategy, policy, s, n, u, day, r, k in zip(d["strategy"], d["policy"], d["test_suite"], d["test_name"], d["unit"], d["day"], d["vm_region"], d["vm_sku"]):
    def outcome(place):
        v = median[(s, n, u, day) + place]
        t = 1 / v if hib[u] else v
        return t * price[place] if strategy == "optimize_cost" else t
    best = min(outcome(p) for p in price)
    ratios[(strategy, policy)].append(outcome((r, k)) / best)
out = {}
for (strategy, policy), x in ratios.items():
    x = np.array(x)
    out.setdefault(strategy, {})[policy] = {
        "n": len(x),
        "geomean": math.exp(np.log(x).mean()),
        "p95": float(np.percentile(x, 95)),
        "oracle_picks": float((x <= 1 + 1e-12).mean()),
    }
print(json.dumps(out))
