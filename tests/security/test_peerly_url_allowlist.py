"""Issue 14 item 3: the file-URL allow-list matches where a URL really leads.

The old check compared the URL as written, before the HTTP client resolved
dot segments (``/lists/../private`` and ``/lists/%2e%2e/private`` fetched
``/private``), and a host-only entry allowed any port (``:6379``).
"""

from __future__ import annotations

import pytest

from handlers.peerly.files import allowed_url, url_allowed

ALLOW = ["files.example.org", "https://cdn.example.com/lists/"]


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example.com/lists/../private/x.csv",
        "https://cdn.example.com/lists/%2e%2e/private/x.csv",
        "https://cdn.example.com/lists/%2E%2E/private/x.csv",
        "https://cdn.example.com/lists/.%2e/private/x.csv",
        "https://cdn.example.com/lists/a/../../private/x.csv",
        "https://cdn.example.com/lists%2f..%2fprivate/x.csv",
        "https://cdn.example.com/lists/..%2fprivate/x.csv",
        "https://cdn.example.com:8443/lists/x.csv",
        "https://files.example.org:6379/",
        "https://files.example.org:8443/a.csv",
        "https://user@files.example.org/a.csv",
        "https://user:pw@files.example.org/a.csv",
        "https://files.example.org@evil.example.com/a.csv",
        "https://evil.example.com#@files.example.org/a.csv",
        "https://evil.example.com\\@files.example.org/a.csv",
        "http://files.example.org/a.csv",
        "https://files.example.org.evil.example.com/a.csv",
    ],
)
def test_escapes_are_refused(url: str) -> None:
    """Dot segments (plain or percent-encoded), other ports, user-info and look-alike hosts do not match."""
    assert not url_allowed(url, ALLOW)


@pytest.mark.parametrize(
    "url",
    [
        "HTTPS://FILES.EXAMPLE.ORG/a.csv",
        "https://files.example.org:443/a.csv",
        "https://files.example.org./a.csv",
        "https://cdn.example.com/lists/sub/../a.csv",
        "https://cdn.example.com/%6cists/a.csv",
        "https://CDN.example.com:443/lists/a.csv",
    ],
)
def test_equivalent_spellings_match(url: str) -> None:
    """Case, the default port, a trailing dot and encoded unreserved characters are normalised away."""
    assert url_allowed(url, ALLOW)


def test_fetched_url_is_the_one_matched() -> None:
    """What is fetched is the normalised URL that was matched, not the text as written."""
    fetched = allowed_url("https://cdn.example.com/lists/sub/%2e%2e/a.csv", ALLOW)
    assert fetched is not None and fetched.path == "/lists/a.csv"


def test_host_only_entry_means_port_443() -> None:
    """A host-only entry allows that host on 443 only; a URL entry with a port allows that port only."""
    assert url_allowed("https://files.example.org/x", ["files.example.org"])
    assert not url_allowed("https://files.example.org:444/x", ["files.example.org"])
    assert url_allowed("https://files.example.org:8443/x", ["https://files.example.org:8443/"])
    assert not url_allowed("https://files.example.org/x", ["https://files.example.org:8443/"])


def test_ip_literals_compared_in_one_spelling() -> None:
    """IPv6 literals match in any spelling; numeric hosts that hide an IPv4 address never match."""
    entry = ["https://[::1]:8443/files/"]
    assert url_allowed("https://[0:0:0:0:0:0:0:1]:8443/files/a.csv", entry)
    assert not url_allowed("https://[::2]:8443/files/a.csv", entry)
    assert url_allowed("https://127.0.0.1/a.csv", ["127.0.0.1"])
    assert not url_allowed("https://2130706433/a.csv", ["127.0.0.1"])
    assert not url_allowed("https://127.1/a.csv", ["127.0.0.1"])
