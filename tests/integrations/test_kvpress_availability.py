"""kvpress is optional: the engine never imports it, and the kvpress features say what is wrong and what to install
when it is missing or does not accept the installed transformers (kvpress 0.5.5 requires transformers<5.3)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest

import kvcrush.integrations as integrations
from kvcrush.integrations import KvpressMissing, KvpressUnavailable, kvpress_problem, require_kvpress


def _installed(monkeypatch, kvpress: str | None, transformers: str, requires: list[str] | None = None) -> None:
    """Pretend kvpress `kvpress` (None: not installed) and transformers `transformers` are installed."""
    versions = {"kvpress": kvpress, "transformers": transformers}

    def version(name):
        if versions.get(name) is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requires if name == "kvpress" else None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if kvpress else None) if name == "kvpress" else find_spec(name, *a)))


KVPRESS_055 = ["accelerate<2,>=1.0.0", "torch<3,>=2.3.1", "transformers<5.3,>=4.56.0",
               "scipy<2,>=1.13.1; extra == 'eval'"]


def test_missing_kvpress_says_what_to_install(monkeypatch):
    _installed(monkeypatch, None, "5.25.0")
    problem = kvpress_problem()
    assert "kvpress is not installed" in problem
    assert "pip install kvpress==0.5.5 transformers==5.2.0" in problem and "do not need kvpress" in problem
    with pytest.raises(KvpressMissing) as error:
        require_kvpress()
    assert isinstance(error.value, ModuleNotFoundError) and error.value.name == "kvpress"


def test_kvpress_that_rejects_the_installed_transformers_says_so(monkeypatch):
    _installed(monkeypatch, "0.5.5", "5.25.0", KVPRESS_055)
    problem = kvpress_problem()
    assert problem.startswith("The installed kvpress 0.5.5 does not accept the installed transformers 5.25.0: "
                              "it requires transformers<5.3,>=4.56.0.")
    assert "pip install transformers==5.2.0" in problem and "a kvpress release that supports transformers 5.25.0" \
        in problem and "pip uninstall kvpress" in problem
    with pytest.raises(KvpressUnavailable, match="does not accept the installed transformers 5.25.0") as error:
        require_kvpress()
    assert not isinstance(error.value, ModuleNotFoundError)


def test_an_older_transformers_is_named_too(monkeypatch):
    _installed(monkeypatch, "0.5.5", "4.40.0", KVPRESS_055)
    problem = kvpress_problem()
    assert "transformers 4.40.0" in problem and "pip install transformers==5.2.0" in problem
    assert "supports transformers" not in problem


def test_a_kvpress_that_accepts_the_installed_transformers_is_fine(monkeypatch):
    _installed(monkeypatch, "0.5.5", "5.2.0", KVPRESS_055)
    assert kvpress_problem() is None
    require_kvpress()


def test_importing_the_integration_raises_the_message(monkeypatch):
    monkeypatch.setattr(integrations, "kvpress_problem", lambda: "kvpress is not installed. (test)")
    monkeypatch.delitem(sys.modules, "kvcrush.integrations.kvpress", raising=False)
    monkeypatch.delitem(sys.modules, "benchmarks.kvpress_runner", raising=False)
    for module in ("kvcrush.integrations.kvpress", "benchmarks.kvpress_runner"):
        with pytest.raises(KvpressUnavailable, match=r"kvpress is not installed\. \(test\)"):
            importlib.import_module(module)


ENGINE_WITHOUT_KVPRESS = """
import sys
sys.modules["kvpress"] = None  # `import kvpress` now fails, as where it is not installed
import kvcrush
from benchmarks import engines, quality, report  # noqa: F401  (the benchmark without kvpress specs)
lm = kvcrush.load_model("random:tiny", device="cpu")
prepared = kvcrush.prepare(lm, "one two three four five six seven eight nine ten " * 20, question="Which?")
for name in kvcrush.policies.POLICIES:
    result = prepared.generate(kvcrush.make_policy(name, budget=0.5), max_new_tokens=2)
    assert result.kv_bytes_after <= result.kv_bytes_before, name
assert sys.modules["kvpress"] is None and not any(m.startswith("kvpress.") for m in sys.modules)
print("ok")
"""


def test_the_engine_never_imports_kvpress():
    completed = subprocess.run([sys.executable, "-c", ENGINE_WITHOUT_KVPRESS], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0 and completed.stdout.strip().endswith("ok"), completed.stderr[-3000:]
