"""The pure parts of git sources: repository URL matching, GitHub's HMAC signature, the `git` field."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ember.api.git import normalise_git, repo_key, signature_ok
from ember.core.errors import InvalidInput


@pytest.mark.parametrize(
    "a, b",
    [
        ("https://github.com/Org/repo.git", "https://github.com/Org/repo"),
        ("git@github.com:Org/repo.git", "https://github.com/Org/repo"),
        ("ssh://git@github.com/Org/repo.git", "https://GitHub.com/Org/repo/"),
        ("https://user:token@github.com/Org/repo", "https://github.com/Org/repo"),
        ("/srv/git/demo.git", "file:///srv/git/demo.git"),
    ],
)
def test_urls_of_the_same_repository_match(a: str, b: str) -> None:
    assert repo_key(a) == repo_key(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("https://github.com/org/repo", "https://github.com/org/repo2"),
        ("https://github.com/org/repo", "https://gitlab.com/org/repo"),
        ("/srv/git/demo.git", "/srv/git/other.git"),
    ],
)
def test_urls_of_different_repositories_do_not_match(a: str, b: str) -> None:
    assert repo_key(a) != repo_key(b)


def test_signature_is_github_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"ref": "refs/heads/main"}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature_ok("s3cret", body, good)
    assert not signature_ok("other", body, good)
    assert not signature_ok("s3cret", body + b" ", good)
    assert not signature_ok("s3cret", body, good.replace("sha256=", "sha1="))
    assert not signature_ok("s3cret", body, "")


def test_git_field_gets_defaults_and_keeps_its_webhook_secret() -> None:
    first = normalise_git({"url": "https://github.com/org/repo"}, None, admin=False)
    assert first["branch"] == "main" and first["dockerfile"] == "Dockerfile" and first["context"] == "."
    assert len(first["webhookSecret"]) == 40
    again = normalise_git({"url": "https://github.com/org/repo", "branch": "dev"}, first, admin=False)
    assert again["webhookSecret"] == first["webhookSecret"] and again["branch"] == "dev"


def test_git_field_problems_are_all_reported() -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_git({"url": "", "branch": "--upload-pack=x", "dockerFile": "x"}, None, admin=True)
    fields = {p.field for p in caught.value.problems}
    assert fields == {"git.url", "git.branch", "git.dockerFile"}


@pytest.mark.parametrize("url", ["file:///srv/git/demo.git", "/srv/git/demo.git", "demo"])
def test_repositories_on_the_server_are_for_the_admin_only(url: str) -> None:
    assert normalise_git({"url": url}, None, admin=True)["url"] == url
    with pytest.raises(InvalidInput) as caught:
        normalise_git({"url": url}, None, admin=False)
    (problem,) = caught.value.problems
    assert problem.field == "git.url" and "admin" in problem.message


@pytest.mark.parametrize(
    "url", ["http://github.com/org/repo", "git://github.com/org/repo", "ext::sh -c id", "https://", "-oProxy"]
)
def test_git_urls_other_than_https_and_ssh_are_refused_for_everyone(url: str) -> None:
    for admin in (False, True):
        with pytest.raises(InvalidInput) as caught:
            normalise_git({"url": url}, None, admin=admin)
        assert [p.field for p in caught.value.problems] == ["git.url"]
