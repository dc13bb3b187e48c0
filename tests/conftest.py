"""Shared fixtures: tiny datasets (see fakes.py) and the location of the real data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fakes import tiny_dataset, tiny_schema
from mtrec.data.dataset import PreparedDataset

__all__ = ["require_shared_data", "tiny_dataset", "tiny_schema"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def scoring_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Scoring graphs exported by the tests go to a temporary cache (not the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("scoring_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTREC_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def tiny() -> PreparedDataset:
    return tiny_dataset()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (tiny tensors: more threads only add contention on a shared
    machine); use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_data"
    tiny_dataset().save(path)
    return path


def require_shared_data() -> Path:
    """The shared real-data folder, or skip the calling test with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (a fresh clone has none; CI has it)")
    return SHARED_DATA
