#!/usr/bin/env python3
"""What a profile change costs a pool: the README's rollout table, computed, not guessed.

A DaemonSet rolling update replaces at most `maxUnavailable` pods at a time; each replaced pod
runs `copy` -> `load` -> `untaint` on its node, which the node suite measures end to end as
`rollout_node_ms` (kubectl apply -> the node's label shows the new digest). So a pool of N nodes
takes ceil(N / budget) rounds of one node's rollout, where budget is maxUnavailable as a number,
or a percentage of N rounded up (as the DaemonSet controller rounds it), and at least 1.

    rollout_table.py PER_NODE_SECONDS   prints the README's Markdown table for that figure
"""

import math
import sys

POOLS = (10, 100, 1000)
BUDGETS = ("1", "5%", "10%", "25%")


def budget(max_unavailable: str, nodes: int) -> int:
    """maxUnavailable as the DaemonSet controller applies it to `nodes` nodes."""
    if max_unavailable.endswith("%"):
        return max(1, math.ceil(nodes * int(max_unavailable[:-1]) / 100))
    return max(1, int(max_unavailable))


def rollout_seconds(per_node: float, nodes: int, max_unavailable: str) -> float:
    return math.ceil(nodes / budget(max_unavailable, nodes)) * per_node


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(per_node: float) -> str:
    head = "| nodes | " + " | ".join(f"`maxUnavailable: {b}`" for b in BUDGETS) + " |"
    rule = "|---|" + "---|" * len(BUDGETS)
    rows = [
        f"| {n} | " + " | ".join(human(rollout_seconds(per_node, n, b)) for b in BUDGETS) + " |"
        for n in POOLS
    ]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    print(table(float(sys.argv[1])))
