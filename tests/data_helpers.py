"""Shared by the data_prep tests: where the real samples live, and a ``datasets`` that stays offline."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # next to the repository, not in it: absent in CI clones


def needs(path: Path, what: str):
    """Skip a test whose real sample ``path`` is absent, saying where it was looked for."""
    return pytest.mark.skipif(not path.exists(), reason=f"{what} not found at {path} (outside the repository)")


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    """``datasets`` must never reach the network and must cache under the test's own folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
