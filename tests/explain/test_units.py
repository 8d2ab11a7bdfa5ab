"""Each head's ranking replayed from the trace reproduces exactly what the selection kept."""

from __future__ import annotations

import kvcrush
from kvcrush.explain import layer_units
from tests.explain.checks import check_units


def test_ranks_and_cutoff_reproduce_every_heads_kept_set_and_the_candidates(trace):
    assert sum(check_units(layer) for layer in trace.layers)


def test_a_spilled_layer_ranks_the_representatives_last(prepared):
    trace = prepared.select(kvcrush.make_policy("kvcrush", 0.9, crush_fraction=0.8))
    spilled = [units for units in map(layer_units, trace.layers) if units is not None and units.spilled]
    assert spilled, "a 90% budget with crush fraction 0.8 has fewer candidates than representatives"
    units = spilled[0]
    others = units.n_units - units.n_representatives
    assert (units.rank[:, units.is_representative] > others).all()
    assert units.cutoff > units.candidate_cutoff and units.n_ranked == others
