"""Exposure: the server listens on loopback with deliberate settings, and no source runs code from input.

The scan reads the project's source with `ast` (not regular expressions) and fails on any call that
could run a shell, evaluate text, unpickle, or run a model's remote code.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from kvcrush.textio import MAX_TEXT_BYTES

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".streamlit" / "config.toml"
SCANNED = ["kvcrush", "app.py", "pages", "ui", "benchmarks"]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def config() -> dict:
    with open(CONFIG, "rb") as handle:
        return tomllib.load(handle)


def test_server_listens_on_loopback_by_default(config):
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["headless"] is True


def test_no_usage_statistics(config):
    assert config["browser"]["gatherUsageStats"] is False


def test_upload_limit_is_set_deliberately_and_matches_the_text_limit(config):
    limit_mib = config["server"]["maxUploadSize"]  # Streamlit's unit: MiB (value * 1024 * 1024 bytes)
    assert isinstance(limit_mib, int)
    assert MAX_TEXT_BYTES <= limit_mib * MIB <= MAX_TEXT_BYTES + MIB
    assert "MAX_TEXT_BYTES" in CONFIG.read_text(), "the comment must point at the app's own limit"


def test_no_file_watching_or_rerun_on_save_and_xsrf_on(config):
    server = config["server"]
    assert server["runOnSave"] is False
    assert server["fileWatcherType"] == "none"
    assert server.get("enableXsrfProtection", True) is True
    assert server.get("enableCORS", True) is True
    assert server.get("enableStaticServing", False) is False
    assert config["client"]["showErrorDetails"] in ("type", "none")


def test_every_key_is_an_option_streamlit_knows(config):
    """A misspelt key (e.g. maxUploadSizeMB) would be silently ignored by Streamlit."""
    from streamlit import config as st_config

    known = set(st_config._config_options_template)
    for section, values in config.items():
        for key in values:
            assert f"{section}.{key}" in known, f"{section}.{key} is not a Streamlit option"


def test_streamlit_reads_our_values(monkeypatch):
    from streamlit import config as st_config

    monkeypatch.chdir(ROOT)
    st_config.get_config_options(force_reparse=True)
    try:
        assert st_config.get_option("server.address") == "127.0.0.1"
        assert st_config.get_option("browser.gatherUsageStats") is False
        assert st_config.get_option("server.maxUploadSize") * MIB >= MAX_TEXT_BYTES
    finally:
        st_config.get_config_options(force_reparse=True)


# --- source scan ------------------------------------------------------------------------------------------------

FORBIDDEN_CALLS = {
    "eval": "eval() runs text as code",
    "exec": "exec() runs text as code",
    "os.system": "os.system runs a shell",
    "os.popen": "os.popen runs a shell",
    "pickle.load": "pickle.load runs code from the file",
    "pickle.loads": "pickle.loads runs code from the bytes",
    "pickle.Unpickler": "Unpickler runs code from the file",
    "marshal.loads": "marshal.loads reads code objects",
    "dill.load": "dill.load runs code from the file",
    "dill.loads": "dill.loads runs code from the bytes",
    "joblib.load": "joblib.load unpickles",
}


def _source_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*.py")) if ".venv" not in p.parts)
    return files


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for `import x as y` and `from x import y as z`."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def problems_in(source: str, filename: str = "<source>") -> list[str]:
    """Every dangerous call in `source`, as `file:line: why`."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{filename}:{node.lineno}"
        if name in FORBIDDEN_CALLS or name.removeprefix("builtins.") in ("eval", "exec"):
            found.append(f"{where}: {name}: {FORBIDDEN_CALLS.get(name, 'runs text as code')}")
        if name.startswith("subprocess.") and "shell" in keywords and not _is_constant(keywords["shell"], False):
            found.append(f"{where}: {name}(shell=...) runs a shell")
        if name.startswith("os.") and name.split(".")[-1].startswith(("exec", "spawn")):
            found.append(f"{where}: {name} starts programs")
        if name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            found.append(f"{where}: torch.load without weights_only=True unpickles")
        if name in ("yaml.load", "yaml.load_all") and "SafeLoader" not in ast.unparse(keywords.get("Loader", node)):
            found.append(f"{where}: {name} without SafeLoader")
        if "trust_remote_code" in keywords and not _is_constant(keywords["trust_remote_code"], False):
            found.append(f"{where}: trust_remote_code must be literally False")
    for node in ast.walk(tree):  # `**{"trust_remote_code": True}`
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                named = isinstance(key, ast.Constant) and key.value == "trust_remote_code"
                if named and not _is_constant(value, False):
                    found.append(f"{filename}:{node.lineno}: trust_remote_code must be literally False")
    return found


def test_the_scan_finds_what_it_looks_for():
    """The scanner itself, on code that does every forbidden thing (and on safe variants)."""
    bad = '''
import os, subprocess, pickle as pk, torch, yaml
from pickle import loads
from transformers import AutoModel
eval("1")
exec("x = 1")
os.system("ls")
subprocess.run("ls", shell=True)
subprocess.Popen(["ls"], shell=flag)
pk.load(open("f", "rb"))
loads(b"")
torch.load("f")
torch.load("f", weights_only=False)
yaml.load(text)
AutoModel.from_pretrained("x", trust_remote_code=True)
AutoModel.from_pretrained("x", **{"trust_remote_code": True})
os.execv("/bin/sh", [])
'''
    found = problems_in(bad)
    assert len(found) == 13, "\n".join(found)
    safe = '''
import subprocess, torch, yaml
subprocess.run(["python", "-m", "kvcrush"], shell=False)
subprocess.run(["ls"])
torch.load("f", weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
model.eval()
AutoModel.from_pretrained("x", trust_remote_code=False)
'''
    assert problems_in(safe) == []


def test_no_shell_eval_pickle_or_remote_code_in_the_project_source():
    files = _source_files()
    assert any(f.name == "generate.py" for f in files), "the scan must cover kvcrush/"
    found: list[str] = []
    for file in files:
        found.extend(problems_in(file.read_text(encoding="utf-8"), str(file.relative_to(ROOT))))
    assert not found, "dangerous calls in the source:\n" + "\n".join(found)
