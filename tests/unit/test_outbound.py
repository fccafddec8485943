"""The pure outbound rule (`core.outbound`): which addresses tenant-chosen calls may reach, and the
shapes of webhook and git URLs. Addresses here are only judged, never called."""

from __future__ import annotations

import pytest

from ember.core.outbound import (
    GitRemote,
    first_refusal,
    git_remote,
    git_url_problems,
    parse_allow,
    refusal,
    refused_message,
    webhook_problems,
)

TESTS_ALLOW = parse_allow("127.0.0.1/32,::1/128")


@pytest.mark.parametrize(
    "address, why",
    [
        ("127.0.0.1", "a loopback address"),
        ("127.0.0.2", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd00::1", "a private address"),
        ("fec0::1", "a private address"),
        ("100.64.0.1", "a carrier-grade NAT (CGNAT) address"),
        ("100.127.255.254", "a carrier-grade NAT (CGNAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),
        ("::", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.10", "a reserved address"),
        ("198.18.0.1", "a reserved address"),
        ("2001:db8::1", "a reserved address"),
        ("::127.0.0.1", "a reserved address"),
        # IPv6 addresses that carry an IPv4 one are judged by it.
        ("::ffff:127.0.0.1", "a loopback address (127.0.0.1 inside ::ffff:7f00:1)"),
        ("::ffff:10.0.0.1", "a private address (10.0.0.1 inside ::ffff:a00:1)"),
        ("::ffff:169.254.169.254", "a link-local address (169.254.169.254 inside ::ffff:a9fe:a9fe)"),
        ("64:ff9b::a9fe:a9fe", "a link-local address (169.254.169.254 inside 64:ff9b::a9fe:a9fe)"),
        ("2002:7f00:1::", "a loopback address (127.0.0.1 inside 2002:7f00:1::)"),
    ],
)
def test_non_public_addresses_are_refused_by_default_with_their_category(address: str, why: str) -> None:
    assert refusal(address) == why


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None
    assert refusal(address, TESTS_ALLOW) is None


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # the same destination as 127.0.0.1
        ("127.0.0.2", False),
        ("::ffff:127.0.0.2", False),
        ("10.0.0.1", False),
    ],
)
def test_the_allow_list_opens_exactly_its_ranges(address: str, allowed: bool) -> None:
    assert (refusal(address, TESTS_ALLOW) is None) is allowed


def test_a_private_deployment_opens_its_own_network() -> None:
    allow = parse_allow(" 10.0.0.0/8 , fd00::/8,")
    assert refusal("10.20.30.40", allow) is None and refusal("fd12::1", allow) is None
    assert refusal("192.168.0.1", allow) == "a private address"
    assert refusal("127.0.0.1", allow) == "a loopback address"


def test_allow_list_entries_that_are_not_ranges_are_errors_naming_them() -> None:
    assert parse_allow("") == ()
    assert parse_allow("127.0.0.1") == parse_allow("127.0.0.1/32")
    assert parse_allow("127.0.0.5/8") == parse_allow("127.0.0.0/8")  # host bits are forgiven
    for bad in ("localhost", "127.0.0.0/33", "10.0.0.0/8;rm"):
        with pytest.raises(ValueError, match="EMBER_OUTBOUND_ALLOW") as caught:
            parse_allow(f"::1/128,{bad}")
        assert repr(bad) in str(caught.value)


def test_one_refused_address_among_several_refuses_the_name() -> None:
    assert first_refusal(["127.0.0.1", "::1"], TESTS_ALLOW) is None
    assert first_refusal(["127.0.0.1", "127.0.0.2"], TESTS_ALLOW) == ("127.0.0.2", "a loopback address")


def test_the_refusal_message_names_the_host_the_address_and_the_setting() -> None:
    named = refused_message("webhook", "localhost", "127.0.0.1", "a loopback address")
    assert named.startswith("webhook refused: localhost resolves to 127.0.0.1, a loopback address")
    assert "EMBER_OUTBOUND_ALLOW" in named
    literal = refused_message("webhook", "127.0.0.2", "127.0.0.2", "a loopback address")
    assert literal.startswith("webhook refused: 127.0.0.2 is a loopback address")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "https://localhost/x?y=1", "http://u:p@127.0.0.1/", "http://[::1]:9/"],
)
def test_http_and_https_webhooks_with_a_host_are_well_formed(url: str) -> None:
    assert webhook_problems(url) == []


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://", "has no host"),
        ("https:///path", "has no host"),
        ("ftp://127.0.0.1/x", "must be a URL with scheme http or https"),
        ("file:///etc/passwd", "must be a URL with scheme http or https"),
        ("127.0.0.1:8000/hook", "must be a URL with scheme http or https"),
        ("http://127.0.0.1 /x", "must not contain spaces, control characters or backslashes"),
        ("http://127.0.0.1\\@127.0.0.2/", "must not contain spaces, control characters or backslashes"),
        ("http://127.0.0.1/\x00", "must not contain spaces, control characters or backslashes"),
        ("http://127.0.0.1:99999/", "is not a valid URL (bad port or IPv6 address)"),
        ("http://[::1/", "is not a valid URL (bad port or IPv6 address)"),
        ("http://127.0.0.1:0/", "has port 0"),
        ("http://a@b@127.0.0.1/", "has a host that is not a DNS name or an IP address"),
        ("http://%31%32%37.0.0.1/", "has a host that is not a DNS name or an IP address"),
        ("http://127.0.0.1/" + "x" * 2100, "must be at most 2048 characters"),
        (["http://127.0.0.1/"], "must be a URL (http or https)"),
    ],
)
def test_malformed_webhooks_are_problems_naming_the_field(url: object, message: str) -> None:
    (problem,) = webhook_problems(url)
    assert problem.field == "webhook" and problem.message == message


@pytest.mark.parametrize(
    "url, remote",
    [
        ("https://github.com/org/repo.git", GitRemote("https", "github.com", 443)),
        ("https://tok@GitHub.com:8443/org/repo", GitRemote("https", "github.com", 8443)),
        ("ssh://git@github.com/org/repo.git", GitRemote("ssh", "github.com", 22)),
        ("ssh://git@[::1]:2222/r.git", GitRemote("ssh", "::1", 2222)),
        ("git@github.com:org/repo.git", GitRemote("ssh", "github.com", 22)),
        ("git@[::1]:org/repo.git", GitRemote("ssh", "::1", 22)),
        ("file:///srv/git/demo.git", GitRemote("file")),
        ("/srv/git/demo.git", GitRemote("file")),
        ("./demo:x", GitRemote("file")),
    ],
)
def test_git_urls_name_their_remote(url: str, remote: GitRemote) -> None:
    assert git_remote(url) == remote


@pytest.mark.parametrize(
    "url",
    [
        "http://github.com/org/repo",
        "git://github.com/org/repo",
        "ftp://github.com/org/repo",
        "ext::sh -c id",
        "fd::17/x",
        "-uhttps://github.com/x",
        "https://",
        "https://git hub.com/x",
        "",
        None,
    ],
)
def test_other_git_urls_are_problems_for_everyone(url: object) -> None:
    for admin in (False, True):
        problems = git_url_problems(url, admin=admin)
        assert [p.field for p in problems] == ["git.url"], problems


def test_repositories_on_the_server_are_named_by_the_admin_only() -> None:
    for url in ("file:///srv/git/demo.git", "/srv/git/demo.git"):
        assert git_url_problems(url, admin=True) == []
        (problem,) = git_url_problems(url, admin=False)
        assert "admin" in problem.message
