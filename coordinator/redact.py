"""The one redaction path: every string that leaves the process goes through `redact`.

Two layers, because no single parse of a URL is the one every client uses (libpq does
not treat '#' as a fragment, Python's urlsplit ends the authority at '/', '?' or '#',
redis-py and the Consul client each have their own rules):

- shapes: in any text, everything between "scheme://" and the LAST '@' of the
  whitespace-free run that follows is a user and a password, and the password part is
  replaced; so are secret query parameters (?password=...) and libpq's key=value
  `password=...`. Conservative: an '@' later in a path hides more than needed.
- values: the secrets themselves, as found in the configuration and in the variables
  the backends read (see `register_environment`), are registered at start in every form
  a client could parse them (raw, percent-decoded, percent-encoded) and replaced
  wherever they appear, whatever the text around them. A client that chokes on a
  password may quote only a piece of it, so any FRAGMENT characters in a row taken
  from a registered value are replaced too. Values shorter than MIN_SECRET characters
  are not replaced as free text (they would erase ordinary words and numbers); the
  shapes above still hide them inside URLs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlsplit

MASK = "***"
MIN_SECRET = 4
FRAGMENT = 6

# The variables the backends read an address or a secret from.
URL_VARIABLES = ("COORDINATOR_URL", "REDIS_URL", "DATABASE_URL", "CONSUL_HTTP_ADDR")
SECRET_VARIABLES = ("PGPASSWORD", "CONSUL_HTTP_TOKEN")

SECRET_WORD = r"[\w.-]*(?:password|passwd|pwd|token|secret)[\w.-]*"
# scheme://userinfo@ up to the last '@' before whitespace.
URL_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s@]*(?:@[^\s@]*)*)@")
# ?password=... and &token=... in a URL's query: the value ends at whitespace or at an
# '&' that starts the next name=value pair; a raw password may hold '&', '#', '?', '@'.
QUERY_VALUE = r"(?:[^&\s]|&(?![\w.-]*=))*"
QUERY_SECRET = re.compile(rf"([?&]{SECRET_WORD}=){QUERY_VALUE}", re.IGNORECASE)
# libpq's key=value form: password=value or password='quoted value'.
KEYWORD_SECRET = re.compile(
    rf"((?<![?&\w]){SECRET_WORD}\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret's substrings go with it
_fragments: frozenset[str] = frozenset()  # every FRAGMENT-long piece of a secret


def register(*values: str | None) -> None:
    """Hide these values (and their percent-decoded and -encoded forms) from now on."""
    global _secrets, _fragments
    found = set(_secrets)
    for value in values:
        if not value:
            continue
        # surrogateescape: a byte of the command line or environment that is not UTF-8
        # is percent-encoded as the byte it is, as a client would.
        encoded = quote(value, safe="", errors="surrogateescape")
        for form in (value, unquote(value), unquote_plus(value), encoded):
            if len(form) >= MIN_SECRET and form != MASK:
                found.add(form)
    pieces = {form[i : i + FRAGMENT] for form in found for i in range(len(form) - FRAGMENT + 1)}
    with _lock:
        _secrets = tuple(sorted(found, key=len, reverse=True))
        _fragments = frozenset(pieces)


def url_secrets(url: str) -> list[str]:
    """Every string a client could take for the password (or a secret parameter) of
    `url`: split at the first and at the last '@', by urlsplit, and libpq's keywords."""
    found: list[str] = []
    _, sep, rest = url.partition("://")
    if sep:
        for userinfo in (rest.rpartition("@")[0], rest.partition("@")[0] if "@" in rest else ""):
            # libpq ends the user info at the first '/' too, before any '@'.
            for candidate in (userinfo, userinfo.split("/", 1)[0]):
                if ":" in candidate:
                    found.append(candidate.split(":", 1)[1])
        try:
            parts = urlsplit(url)
            found.append(parts.password or "")
            query = parts.query
        except ValueError:
            query = url.partition("?")[2]
        # A password with '?' or '#' moves the query: read every '?'-separated tail.
        for tail in [query, *url.split("?")[1:]]:
            for key, value in parse_qsl(tail, keep_blank_values=True):
                if re.fullmatch(SECRET_WORD, key, re.IGNORECASE):
                    found.append(value)
        # And the value as written, raw, up to the next name=value pair: a client may
        # end it at '#', '?' or '&', and the text after that is part of the secret too.
        found += [m.group(0).split("=", 1)[1] for m in QUERY_SECRET.finditer(rest)]
    else:
        for match in KEYWORD_SECRET.finditer(url):
            value = match.group(2)
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value.strip("'"))
            found.append(value)
    return [value for value in found if value]


def register_url(url: str | None) -> None:
    if url:
        register(*url_secrets(url))


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """The secrets of every variable a backend may read, whichever backend is chosen."""
    env = os.environ if environ is None else environ
    for name in URL_VARIABLES:
        register_url(env.get(name))
    register(*(env.get(name) for name in SECRET_VARIABLES))


def register_arguments(args: Iterable[str]) -> None:
    """The --url value of a command line, before the command's own arguments."""
    words = list(args)
    for index, word in enumerate(words):
        if word == "--":
            return
        if word == "--url" and index + 1 < len(words):
            register_url(words[index + 1])
        elif word.startswith("--url="):
            register_url(word[len("--url=") :])


def register_command(words: Iterable[str]) -> None:
    """What the command's arguments hold shaped like a password (a URL's
    user:password@, ?password=, password=..., the word after --password): the default
    lock name is derived from these words, so it would show them. Also registered as
    the name's readable part writes them (other characters as '-')."""
    found: list[str] = []
    previous = ""
    for word in words:
        if re.fullmatch(rf"--?{SECRET_WORD}", previous, re.IGNORECASE):
            found.append(word)
        found += [word[start:end] for start, end in _shape_spans(word)]
        previous = word
    register(*found, *(re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-") for value in found))


def _shape_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    if "://" in text:
        for match in URL_AUTHORITY.finditer(text):
            user, colon, _ = match.group(2).partition(":")
            if colon:  # a user name alone is no secret
                spans.append((match.start(2) + len(user) + 1, match.end(2)))
    if "=" in text:
        found = [(m.end(1), m.end()) for m in QUERY_SECRET.finditer(text)]
        found += [(m.start(2), m.end(2)) for m in KEYWORD_SECRET.finditer(text)]
        # A value already hidden as a registered secret ends there: what follows it
        # is the message's own (the quote and colon after a URL, "?password=***': x").
        spans += [(s, s + len(MASK)) if text.startswith(MASK, s) else (s, e) for s, e in found]
    return spans


def shapes(text: str) -> str:
    """`text` with every password-shaped part hidden. Each rule is matched on the text
    as given and the parts they find are hidden together, so one rule cannot hide from
    another what it needs (a raw '@' in a ?sentinel_password= value is also the last
    '@' of a URL authority)."""
    spans = _shape_spans(text)
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in sorted(spans):
        if start < last:  # overlaps the part hidden before: hide up to the later end
            out[-1] = MASK
            last = max(last, end)
            continue
        out += [text[last:start], MASK]
        last = end
    return "".join(out) + text[last:]


def redact(text: str) -> str:
    """`text` with every registered secret and every password-shaped part hidden."""
    if not text:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if _fragments:
        text = _mask_fragments(text, _fragments)
    return shapes(text)


def _mask_fragments(text: str, fragments: frozenset[str]) -> str:
    """Replace every run of text covered by FRAGMENT-long pieces of a secret."""
    covered_to, spans = -1, list[list[int]]()
    for i in range(len(text) - FRAGMENT + 1):
        if text[i : i + FRAGMENT] in fragments:
            if spans and i <= covered_to:
                spans[-1][1] = i + FRAGMENT
            else:
                spans.append([i, i + FRAGMENT])
            covered_to = i + FRAGMENT
    for start, end in reversed(spans):
        text = text[:start] + MASK + text[end:]
    return text


def redact_url(url: str | None) -> str:
    """A URL (or libpq conninfo) fit for logs and error messages."""
    return redact(url or "")


def clean(value: Any) -> Any:
    """`value` (a JSON-able document) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    return value


class LogFilter(logging.Filter):
    """Attached to the log handler: the message is redacted before any formatter sees
    it (JSON escaping would otherwise hide a secret from the text replacement)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def reset() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets, _fragments
    with _lock:
        _secrets, _fragments = (), frozenset()
