"""Host syncs per selection and per `generate` (1 new token), for every configuration of tests/test_syncs.py,
at 4 and 32 layers, counted on the CPU with `kvcrush.syncs.HostSyncCounter`; prints a markdown table.

    PYTHONPATH=. .venv/bin/python tests/measure_syncs.py
"""

from __future__ import annotations

import torch

import kvcrush
from kvcrush.syncs import HostSyncCounter
from tests.test_syncs import CONFIGS, QUESTION, TEXT


def main() -> None:
    torch.set_num_threads(1)
    counts: dict[str, dict[int, tuple[int, int]]] = {}
    for layers in (4, 32):
        lm = kvcrush.load_model("random:tiny", device="cpu", num_hidden_layers=layers)
        prepared = kvcrush.prepare(lm, TEXT, question=QUESTION)
        for label, (name, options) in CONFIGS.items():
            policy = kvcrush.make_policy(name, budget=0.3, **options)
            prepared.select(policy)  # its scores are cached from here on
            with HostSyncCounter() as select:
                prepared.select(policy)
            with HostSyncCounter() as generate:
                prepared.generate(policy, max_new_tokens=1)
            counts.setdefault(label, {})[layers] = (select.count, generate.count)
    print("| config | select, 4 layers | select, 32 layers | generate, 4 layers | generate, 32 layers |")
    print("|---|---|---|---|---|")
    for label, by_depth in counts.items():
        print(f"| {label} | {by_depth[4][0]} | {by_depth[32][0]} | {by_depth[4][1]} | {by_depth[32][1]} |")


if __name__ == "__main__":
    main()
