"""Condense the regime map (benchmarks/results/regime.json) into the table the package ships.

``noisepair advise`` places a user's data on the regime map, and an installed package cannot
read benchmarks/: this script writes noisepair/regime_map.json, the rectified-flow rows of the
map (one per data set and arm: the squared-path ratio and the paired changes against random,
mean and 95% interval), with the source file and its date. Run it after every new regime map:

    python benchmarks/regime_table.py          # rewrites noisepair/regime_map.json

tests/test_advise.py checks that the shipped table is what this script makes of regime.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "benchmarks" / "results" / "regime.json"
TARGET = ROOT / "noisepair" / "regime_map.json"
#: the changes kept per row, as in regime.md's columns: 50- and 2-step W2, 1-step
#: discretisation error, adaptive-solver evaluations.
METRICS = ("w2_50", "w2_2", "disc1", "nfe")
BATCH = 128  # the map's batch size (benchmarks/regime.py)


def condense(regime: dict) -> dict:
    """The shipped table of a regime.json: rectified-flow map rows of the matched arms."""
    rows = []
    for row in regime["rows"]:
        if row["kind"] != "map" or row["objective"] != "rf" or row["arm"] == "random":
            continue
        family, d = row["data"].rsplit("-d", 1) if "-d" in row["data"] else (row["data"], "2")
        rows.append(
            {
                "data": row["data"],
                "d": int(d),
                "source": "N(0, I)" if family in ("gmm", "digits") else "8 gaussians",
                "arm": row["arm"],
                "matched_set": _matched_set(row["arm"]),
                "path_ratio": round(row["path_ratio"], 4),
                **{m: _interval(row["change"].get(m)) for m in METRICS},
            }
        )
    meta = regime["meta"]
    return {
        "source": "benchmarks/results/regime.json",
        "generated_by": "python benchmarks/regime_table.py",
        "date": meta["date"],
        "machine": meta["machine"],
        "setup": (
            "rectified flow, batch 128, 600 Adam steps of a 3-layer MLP, "
            f"{regime['rows'][0]['seeds']} seeds; each change is the mean relative change "
            "against random pairing (paired by seed) with its 95% t interval, negative is better"
        ),
        "metrics": {
            "w2_50": "W2 to held-out data, 50 Euler steps",
            "w2_2": "W2 to held-out data, 2 Euler steps",
            "disc1": "1-step discretisation error |Phi_1 - Phi_100|^2",
            "nfe": "adaptive RK45 evaluations",
        },
        "rows": rows,
    }


def _matched_set(arm: str) -> int | None:
    """Samples matched together: the batch, the scope, the pool; None for KNN (no set)."""
    for prefix in ("scope", "pool"):
        if arm.startswith(prefix):
            return int(arm[len(prefix) :])
    return BATCH if arm == "batch" else None


def _interval(change: dict | None) -> list[float] | None:
    if change is None:
        return None
    return [round(change[k], 4) for k in ("mean", "lo", "hi")]


def dumps(table: dict) -> str:
    """JSON with one map row per line (a reviewable diff when the map is rerun)."""
    head = {k: v for k, v in table.items() if k != "rows"}
    rows = ",\n".join("  " + json.dumps(r) for r in table["rows"])
    return json.dumps(head, indent=1)[:-2] + ',\n "rows": [\n' + rows + "\n ]\n}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(SOURCE))
    parser.add_argument("--out", default=str(TARGET))
    args = parser.parse_args(argv)
    table = condense(json.loads(Path(args.source).read_text()))
    Path(args.out).write_text(dumps(table))
    print(f"wrote {args.out}: {len(table['rows'])} rows of the regime map of {table['date']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
