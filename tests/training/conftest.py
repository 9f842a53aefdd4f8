import pytest

from tests.training.shards import make_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tokenizer + pairs/text train/val shards (a few hundred samples), built once per session."""
    return make_dataset(tmp_path_factory.mktemp("tiny_data"))
