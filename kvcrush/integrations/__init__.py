"""Bridges from this project's engine to other KV-compression toolkits.

`kvcrush.integrations.kvpress`: KVCrush as an NVIDIA kvpress press (`KVCrushPress`) and any of our
policies as a press (`as_press`). Importing it needs the optional `kvpress` package, in a version that accepts
the installed transformers: kvpress 0.5.5 (the newest release, the one this project is tested with) requires
transformers<5.3. `kvpress_problem()` says what is wrong without importing kvpress; importing the integration (or
`benchmarks.kvpress_runner`) raises `KvpressUnavailable` with that message. The engine, the explorer and the
benchmark's own policies never import kvpress and run on any supported transformers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

KVPRESS_TESTED = "0.5.5"  # the kvpress release this project is tested with
TRANSFORMERS_FOR_KVPRESS = "5.2.0"  # the newest transformers kvpress 0.5.5 accepts (it requires <5.3)
WITHOUT_KVPRESS = ("The engine, the explorer and the benchmark's own policies do not need kvpress; only "
                   "kvcrush.integrations.kvpress and the benchmark's kvpress:* systems do.")


class KvpressUnavailable(ImportError):
    """kvpress is not installed, or the installed kvpress does not accept the installed transformers."""


class KvpressMissing(KvpressUnavailable, ModuleNotFoundError):
    """kvpress is not installed (a ModuleNotFoundError too, as a plain `import kvpress` would raise)."""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _transformers_requirement():
    """kvpress's own requirement on transformers (from its installed metadata), or None."""
    from packaging.requirements import InvalidRequirement, Requirement

    for line in importlib.metadata.requires("kvpress") or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.name.lower() == "transformers" and (requirement.marker is None
                                                          or requirement.marker.evaluate({"extra": ""})):
            return requirement
    return None


def kvpress_problem() -> str | None:
    """Why kvpress cannot be used here (not installed; or it does not accept the installed transformers), or None.

    Reads package metadata only: kvpress is not imported (importing it patches transformers' attention functions).
    """
    kvpress_version = _version("kvpress")
    if importlib.util.find_spec("kvpress") is None or kvpress_version is None:
        return (f"kvpress is not installed. {WITHOUT_KVPRESS} To use them, install kvpress with the transformers it "
                f"accepts: pip install kvpress=={KVPRESS_TESTED} transformers=={TRANSFORMERS_FOR_KVPRESS} "
                f"(kvpress {KVPRESS_TESTED} requires transformers<5.3).")
    transformers_version = _version("transformers")
    requirement = _transformers_requirement()
    if requirement is None or transformers_version is None:
        return None
    if requirement.specifier.contains(transformers_version, prereleases=True):
        return None
    from packaging.version import Version

    fits = requirement.specifier.contains(TRANSFORMERS_FOR_KVPRESS, prereleases=True)
    suggestion = f"transformers=={TRANSFORMERS_FOR_KVPRESS}" if fits else f"'transformers{requirement.specifier}'"
    newer_release = (f", or a kvpress release that supports transformers {transformers_version}"
                     if Version(transformers_version) > Version(TRANSFORMERS_FOR_KVPRESS) else "")
    return (f"The installed kvpress {kvpress_version} does not accept the installed transformers "
            f"{transformers_version}: it requires transformers{requirement.specifier}. Install a transformers it "
            f"accepts (pip install {suggestion}; this project tests kvpress {KVPRESS_TESTED} with transformers "
            f"{TRANSFORMERS_FOR_KVPRESS}){newer_release}, or uninstall kvpress (pip uninstall kvpress). "
            f"{WITHOUT_KVPRESS}")


def require_kvpress() -> None:
    """Raise `KvpressUnavailable` (an ImportError) saying what is wrong and what to install, unless kvpress is
    installed and accepts the installed transformers."""
    problem = kvpress_problem()
    if problem is not None:
        missing = importlib.util.find_spec("kvpress") is None
        raise (KvpressMissing(problem, name="kvpress") if missing else KvpressUnavailable(problem, name="kvpress"))
