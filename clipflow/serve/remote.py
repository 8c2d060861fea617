"""Images fetched from a query's image_url: http(s) only, public addresses only (unless allowed), bounded."""

import errno
import ipaddress
import socket

from aiohttp import ClientSession, ClientTimeout, TCPConnector, ThreadedResolver

from clipflow.serve.errors import RequestError


class PublicResolver(ThreadedResolver):
    """Resolves only to public addresses: a query's image_url cannot reach the server's own network."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        addresses = [a for a in await super().resolve(host, port, family) if is_public(a["host"])]
        if not addresses:
            # errno + strerror so that aiohttp's connection error keeps the reason in its message
            raise OSError(errno.EACCES, f"{host} resolves only to private addresses")
        return addresses


def is_public(host: str) -> bool:
    return ipaddress.ip_address(host).is_global


def _literal_ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class RemoteImages:
    """Fetches image_url bodies, at most `max_body_bytes`, following at most 5 redirects, each hop checked."""

    def __init__(self, max_body_bytes: int, allow_private_urls: bool, timeout: float):
        self.max_body_bytes, self.allow_private_urls, self.timeout = max_body_bytes, allow_private_urls, timeout
        self.session: ClientSession | None = None

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    async def fetch(self, url) -> bytes:
        """The bytes at an http(s) image_url, following at most 5 redirects, each hop checked."""
        from yarl import URL

        if not isinstance(url, str):
            raise RequestError("image_url", "image_url must be a string")
        if self.session is None:
            resolver = ThreadedResolver() if self.allow_private_urls else PublicResolver()
            self.session = ClientSession(
                connector=TCPConnector(resolver=resolver), timeout=ClientTimeout(total=self.timeout)
            )
        for _ in range(6):
            try:
                parsed = URL(url)
                parsed.port  # noqa: B018 - yarl checks the port (0 to 65535) only when it is read
            except ValueError as error:
                raise RequestError("image_url", f"image_url is not a URL ({error}): {url[:200]!r}") from None
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise RequestError("image_url", f"image_url must be an http(s) URL, not {url!r}")
            ip = _literal_ip(parsed.host)
            if ip is not None and not ip.is_global and not self.allow_private_urls:
                raise RequestError("image_url", f"image_url points at a private address ({parsed.host})")
            try:
                async with self.session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = str(parsed.join(URL(response.headers["Location"])))
                        continue
                    if response.status != 200:
                        raise RequestError("image_url", f"image_url answered HTTP {response.status}")
                    return await self._body(response)
            except RequestError:
                raise
            except Exception as error:
                raise RequestError("image_url", f"cannot fetch image_url: {type(error).__name__}: {error}") from None
        raise RequestError("image_url", "image_url redirects more than 5 times")

    async def _body(self, response) -> bytes:
        """The whole body (a single read returns only what has arrived), refused past the size limit."""
        too_large = RequestError("image_url", f"the image at image_url is over {self.max_body_bytes:,} bytes", 413)
        if (response.content_length or 0) > self.max_body_bytes:
            raise too_large
        body = bytearray()
        async for chunk in response.content.iter_chunked(2**16):
            body += chunk
            if len(body) > self.max_body_bytes:
                raise too_large
        return bytes(body)
