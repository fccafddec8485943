"""What a worker gets to load a cached model offline: env names and the read-only container mount."""

from __future__ import annotations

import pytest

from ember.core.errors import InvalidInput
from ember.models.env import CONTAINER_HF_HOME, container_model_env, model_env
from ember.models.state import check_repo_id, repo_folder

SNAP = "/srv/ember/models/hub/models--org--name/snapshots/abc123"


def test_local_env_points_the_hub_at_the_cache_offline() -> None:
    env = model_env("/srv/ember/models", "org/name", SNAP)
    assert env["HF_HOME"] == "/srv/ember/models"
    assert env["HF_HUB_CACHE"] == env["HUGGINGFACE_HUB_CACHE"] == "/srv/ember/models/hub"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert (env["EMBER_MODEL_ID"], env["EMBER_MODEL_PATH"]) == ("org/name", SNAP)


def test_container_env_uses_runpods_cache_path_and_a_read_only_mount() -> None:
    mount, env = container_model_env("/srv/ember/models", SNAP, "org/name")
    assert (mount.host_path, mount.container_path, mount.read_only) == (
        "/srv/ember/models/hub/models--org--name",
        CONTAINER_HF_HOME + "/hub/models--org--name",
        True,
    )
    assert env["HF_HUB_CACHE"] == "/runpod-volume/huggingface-cache/hub"
    assert (
        env["EMBER_MODEL_PATH"] == "/runpod-volume/huggingface-cache/hub/models--org--name/snapshots/abc123"
    )
    assert env["HF_MODULES_CACHE"].startswith("/tmp/")


def test_container_env_refuses_a_snapshot_outside_the_cache() -> None:
    with pytest.raises(ValueError):
        container_model_env("/srv/ember/models", "/elsewhere/snap", "org/name")


@pytest.mark.parametrize(
    "good", ["org/name", "gpt2", "Org-1/Model_v2.5", "sentence-transformers/all-MiniLM-L6-v2"]
)
def test_hugging_face_repo_ids_are_accepted(good: str) -> None:
    assert check_repo_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "a/b/c", "../x", "org/..", "/abs", "org/", "with space/x", "a/" + "x" * 97]
)
def test_malformed_repo_ids_are_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_repo_id(bad)
    assert err.value.problems[0].field == "model"


def test_repo_folder_follows_the_hub_cache_naming() -> None:
    assert repo_folder("org/name") == "models--org--name"
