"""The sidebar's storage options (kv_bits, KVCrush's representative_bits) reach the run and the Compare page."""

from __future__ import annotations

from tests.app.helpers import metric, no_errors


def _mib(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[unit]


def test_kv_bits_shrinks_the_measured_cache_and_the_projection(app):
    at = app.run()
    at.switch_page("pages/compare.py").run()
    no_errors(at)
    plain_after = _mib(metric(at, "KV after"))
    plain_projection = metric(at, "Compressed")
    at.selectbox(key="opt_kvcrush_kv_bits").set_value(4).run()
    no_errors(at)
    quantized_after = _mib(metric(at, "KV after"))
    assert quantized_after < plain_after / 2  # 4-bit codes + scales, measured from the stored tensors
    assert metric(at, "Compressed") != plain_projection  # the projection follows the sidebar's bits
    assert at.selectbox(key="mem_bits_4").value == 4
    at.selectbox(key="opt_kvcrush_kv_bits").set_value(8).run()
    eight_bits = _mib(metric(at, "KV after"))
    assert quantized_after < eight_bits < plain_after
    at.selectbox(key="opt_kvcrush_representative_bits").set_value(2).run()
    no_errors(at)
    assert _mib(metric(at, "KV after")) < eight_bits  # cheaper representatives (slots included)


def test_tokens_page_shows_each_kept_tokens_precision(app):
    from tests.app.helpers import html_bodies, token_view

    at = app.run()
    at.selectbox(key="opt_kvcrush_kv_bits").set_value(8).run()
    at.selectbox(key="opt_kvcrush_representative_bits").set_value(2).run()
    no_errors(at)
    legend = next(body for body in html_bodies(at) if 'class="kv-legend"' in body)
    assert "8-bit" in legend and "2-bit" in legend and "full precision" in legend  # residual window: 16
    view = token_view(at)
    assert "kvb-8" in view and "stored at 8 bits" in view
    at.selectbox(key="opt_kvcrush_kv_bits").set_value(16).run()
    at.selectbox(key="opt_kvcrush_representative_bits").set_value(None).run()
    legend = next(body for body in html_bodies(at) if 'class="kv-legend"' in body)
    assert "8-bit" not in legend and "kvb-" not in token_view(at).split("</style>")[1]
