"""How a download job fetches URLs: the urllib opener that img2dataset's downloader uses in this process.

img2dataset fetches with `urllib.request.urlopen`, whose defaults read `file://` and `ftp://` URLs, refuse
URLs with raw spaces or non-ASCII characters, give up only when one socket read outlasts the timeout (a
server dripping one byte a second holds a download for ever) and hand over gzip bodies undecoded.
`install(timeout, deadline)` replaces that opener for the whole process with one that:
- fetches only http, https and data URLs, naming any other scheme in its error;
- sends URLs the way browsers do (`browser_url`);
- fails a download whose body is not read within `deadline` seconds of the request, whatever each read
  takes (the status line and headers are bounded by http.client's limits on their count and length);
- decodes gzip and deflate content encodings and names any other as the failure.
"""

import gzip
import http.client
import string
import time
import urllib.parse
import urllib.request
import zlib

from clipflow.ingest.urls import FETCHED

READ_SIZE = 1 << 16

# What WHATWG's URL standard leaves as it is in a path, a query and a fragment: everything else (spaces,
# control and non-ASCII characters, ...) is sent percent-encoded as UTF-8. '%' stays, so escapes stay single.
_PATH_SAFE = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%[]|^`{}"
_QUERY_SAFE = _PATH_SAFE + "?"
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def browser_url(url: str) -> str:
    """`url` as a browser sends it: surrounding spaces and inner tabs and newlines dropped, the host in IDNA
    form, the path and query percent-encoded as UTF-8 where they hold characters a URL may not carry, no
    fragment. A URL without a host or that is not http(s) comes back stripped and otherwise unchanged."""
    url = url.strip(_C0_AND_SPACE)
    url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return url
    host = parts.hostname.encode("idna").decode("ascii") if not parts.hostname.isascii() else parts.hostname
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username is not None:
        credentials = urllib.parse.quote(parts.username, safe="%")
        if parts.password is not None:
            credentials += ":" + urllib.parse.quote(parts.password, safe="%")
        netloc = f"{credentials}@{netloc}"
    path = urllib.parse.quote(parts.path.replace("\\", "/"), safe=_PATH_SAFE) or "/"
    query = urllib.parse.quote(parts.query, safe=_QUERY_SAFE)
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, path, query, ""))


class DownloadError(OSError):
    """A download that failed for a reason of ours; img2dataset records str(error) as the row's error."""


def _decoded(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":  # RFC 9110 means zlib-wrapped; some servers send raw deflate
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error) as error:
        raise DownloadError(f"body in Content-Encoding {encoding!r} does not decode: {error}") from error
    raise DownloadError(f"unsupported Content-Encoding {encoding!r}")


class _KeepsSocket:
    """A connection whose response keeps its socket: the body is read after urllib drops the connection."""

    def getresponse(self):
        response = super().getresponse()
        response.clipflow_socket = self.sock
        return response


class _Connection(_KeepsSocket, http.client.HTTPConnection):
    pass


class _SecureConnection(_KeepsSocket, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_Connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_SecureConnection, req, context=self._context)


class _Rules(urllib.request.BaseHandler):
    """Browser URLs and a start time on the way out; a deadline and content decoding on the body's read."""

    handler_order = 400  # before urllib's own request preparation and error processing

    def __init__(self, timeout: float, deadline: float):
        self.timeout, self.deadline = timeout, deadline

    def unknown_open(self, req):
        raise DownloadError(f"unsupported URL scheme {req.type!r}: {FETCHED}")

    def http_request(self, req):
        req.full_url = browser_url(req.full_url)
        if not hasattr(req, "clipflow_deadline"):  # a redirect keeps the first request's deadline
            req.clipflow_deadline = time.monotonic() + self.deadline
        return req

    https_request = http_request

    def http_response(self, req, response):
        deadline = getattr(req, "clipflow_deadline", time.monotonic() + self.deadline)
        raw_read = response.read

        def read(amount=None):
            if amount is not None:  # only whole bodies get the deadline and decoding; nobody reads in parts
                return raw_read(amount)
            return _decoded(self._read_by(response, deadline), response.headers.get("Content-Encoding", ""))

        response.read = read
        return response

    https_response = http_response

    def _read_by(self, response, deadline: float) -> bytes:
        sock = getattr(response, "clipflow_socket", None)
        chunks = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DownloadError(f"download took longer than the {self.deadline:g} s deadline")
            if sock is not None:
                sock.settimeout(min(self.timeout, remaining))
            chunk = response.read1(READ_SIZE)
            if not chunk:
                if response.length:  # http.client ends a short body quietly
                    raise DownloadError(f"connection closed {response.length} bytes short of the Content-Length")
                return b"".join(chunks)
            chunks.append(chunk)


def install(timeout: float, deadline: float) -> None:
    """Make every `urlopen` of this process follow the rules above."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _Rules(timeout, deadline),
        _HTTPHandler(),
        _HTTPSHandler(),
        urllib.request.DataHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    urllib.request.install_opener(opener)
