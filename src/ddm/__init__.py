"""Dataset condensation by distribution matching: DM, IDM and DDM."""

from __future__ import annotations

from pathlib import Path

# The version of this source tree; pyproject.toml's [project] version says the same (tested).
SOURCE_VERSION = "0.2.0"
DISTRIBUTION = "ddm-condense"


def package_version() -> str:
    """The installed distribution's version (importlib.metadata) when it is this code, else
    ``SOURCE_VERSION``: a source checkout on ``PYTHONPATH``, or an editable install whose
    recorded version is older than its source, reports the source's version."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError:
        return SOURCE_VERSION
    installed = Path(str(dist.locate_file("ddm/__init__.py")))
    if installed.exists() and installed.resolve() == Path(__file__).resolve():
        return dist.version
    return SOURCE_VERSION


# recorded in every run's meta.json, config.json and metrics.json entries
__version__ = package_version()
