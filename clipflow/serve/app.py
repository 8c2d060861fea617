"""`clipflow serve`: clip-retrieval's back-end HTTP API over the workflow's indices, and a web page.

Endpoints: GET /indices-list, POST /knn-service, POST /metadata (request and response shapes as in
clip-retrieval's clip_back), GET /health, GET /metrics (Prometheus), GET / (the search page) and
GET /images/{index}/{id}.jpg (the sample's JPEG read out of its shard). Concurrent queries are batched
through the encoders and the faiss search; indices and metadata are memory-mapped.
"""

import asyncio
import base64
import binascii
import json
import logging
import socket
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from clipflow.embed.heads import RATINGS
from clipflow.index.folder import MODALITIES, single_threaded_search
from clipflow.serve.errors import RequestError
from clipflow.serve.indices import ServedIndex, distinct, load_indices
from clipflow.serve.limits import Limits
from clipflow.serve.metrics import Metrics
from clipflow.serve.remote import RemoteImages
from clipflow.shards import DamagedShard

log = logging.getLogger(__name__)
WEB_PAGE = Path(__file__).parent / "web" / "index.html"
# Options clip-retrieval's clients send by default. Where this server has no such model they are ignored, as
# clip-retrieval's back end ignores them, and the response's IGNORED_HEADER names them.
IGNORED_HEADER = "X-Clipflow-Ignored-Options"
DEFAULT_AESTHETIC_WEIGHT = 0.5  # ClipClient's, for a score sent without a weight


CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first, for the metrics


class Service:
    def __init__(self, indices: dict[str, ServedIndex], limits: Limits):
        self.indices, self.limits = indices, limits
        self.started = time.time()
        self.monitor = Metrics(indices)
        self.remote = RemoteImages(limits.max_body_bytes, limits.allow_private_urls, limits.image_url_timeout)
        self.ignored_logged: set[tuple[str, str]] = set()

    # --- plumbing ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[self._errors_and_metrics])
        app.router.add_get("/", self.page)
        app.router.add_get("/indices-list", self.indices_list)
        app.router.add_post("/knn-service", self.knn_service)
        app.router.add_post("/metadata", self.metadata)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/images/{index}/{id:\\d+}.jpg", self.image)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app) -> None:
        await self.remote.close()
        for served in self.indices.values():
            if served.takedowns:
                served.takedowns.stop()

    @web.middleware
    async def _errors_and_metrics(self, request, handler):
        endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
        started = time.perf_counter()
        try:
            if (request.content_length or 0) > self.limits.max_body_bytes:  # answered before a byte is read
                raise web.HTTPRequestEntityTooLarge(self.limits.max_body_bytes, request.content_length)
            # clip-retrieval's front end is often hosted elsewhere: browsers ask before posting across origins.
            response = self._preflight() if request.method == "OPTIONS" else await handler(request)
        except RequestError as error:
            response = web.json_response({"error": error.message, "field": error.field}, status=error.status)
            if error.status == 408:
                response.force_close()  # the rest of the body may still come: not as a next request
        except web.HTTPRequestEntityTooLarge:
            message = f"request body over the {self.limits.max_body_bytes} byte limit"
            response = web.json_response({"error": message, "field": "body"}, status=413)
            response.force_close()  # rather than read the rest of a body it will not use
        except web.HTTPMethodNotAllowed as error:
            message = f"{request.method} is not allowed here; use {', '.join(sorted(error.allowed_methods))}"
            response = web.json_response({"error": message, "field": None}, status=405)
        except web.HTTPNotFound as error:
            message = error.reason if error.reason != "Not Found" else f"no such path: {request.path}"
            response = web.json_response({"error": message, "field": None}, status=404)
        except web.HTTPException as error:
            response = web.json_response({"error": error.reason, "field": None}, status=error.status)
        except ConnectionResetError as error:  # the client went away: nobody to answer, nothing wrong here
            log.info("%s %s: the client closed the connection (%s)", request.method, request.path, error)
            response = web.Response(status=CLIENT_CLOSED)
        except Exception:
            log.exception("error answering %s", request.path)
            response = web.json_response({"error": "internal error, see the server log", "field": None}, status=500)
        self.monitor.observe(endpoint, response.status, time.perf_counter() - started)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = IGNORED_HEADER
        return response

    async def _json(self, request) -> dict:
        try:
            async with asyncio.timeout(self.limits.body_timeout_seconds):  # a client that drips its body
                body = await request.json(loads=json.loads)
        except TimeoutError:
            seconds = self.limits.body_timeout_seconds
            raise RequestError("body", f"the request body did not arrive within {seconds:g} s", status=408) from None
        except (ValueError, UnicodeDecodeError) as error:  # ValueError: also integers over Python's 4,300 digits
            raise RequestError("body", f"malformed JSON: {error}") from None
        except RecursionError:
            raise RequestError("body", "JSON nested too deeply") from None
        if not isinstance(body, dict):
            raise RequestError("body", "the body must be a JSON object")
        return body

    def _index(self, body: dict) -> ServedIndex:
        name = body.get("indice_name")
        if name is None:
            return next(iter(self.indices.values()))
        if not isinstance(name, str):
            raise RequestError("indice_name", f"indice_name must be a string or null, not {type(name).__name__}")
        if name not in self.indices:
            raise RequestError("indice_name", f"unknown index {name!r}; known: {sorted(self.indices)}", status=404)
        return self.indices[name]

    def _count(self, body: dict, key: str, default: int, limit: int) -> int:
        value = body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise RequestError(key, f"{key} must be an integer from 1 to {limit}, not {value!r}")
        return value

    # --- endpoints --------------------------------------------------------------------------

    @staticmethod
    def _preflight() -> web.Response:
        headers = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": "Content-Type"}
        return web.Response(status=204, headers=headers)

    async def page(self, request):
        return web.FileResponse(WEB_PAGE)

    async def indices_list(self, request):
        return web.json_response(list(self.indices))

    async def health(self, request):
        indices = {name: served.index.metadata.num_rows for name, served in self.indices.items()}
        health = {"status": "ok", "uptime_s": time.time() - self.started, "indices": indices}
        takedowns = {name: served.takedowns.status() for name, served in self.indices.items() if served.takedowns}
        return web.json_response({**health, "takedowns": takedowns} if takedowns else health)

    async def metrics(self, request):
        return web.Response(body=self.monitor.exposition(), content_type="text/plain")

    async def image(self, request):
        served = self.indices.get(request.match_info["index"])
        number = request.match_info["id"]
        if not number.isdigit() or len(number) > 19:  # an int64 row id
            raise web.HTTPNotFound(reason="no such image (the id is not a row number)")
        try:
            data = served and await asyncio.to_thread(served.image_bytes, int(number))
        except DamagedShard as error:
            log.error("%s", error)  # the operator's to repair; the client gets a plain 503
            raise web.HTTPServiceUnavailable(reason="the shard holding this image is damaged") from None
        if not data:
            raise web.HTTPNotFound(reason="no such image (unknown index or id, or the index has no shards)")
        return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def metadata(self, request):
        body = await self._json(request)
        served = self._index(body)
        ids = body.get("ids")
        rows = served.index.metadata.num_rows
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RequestError("ids", "ids must be a list of integers")
        bad = [i for i in ids if not 0 <= i < rows]
        if bad:
            raise RequestError("ids", f"ids {bad[:10]} are not rows of index {served.name!r} (0 to {rows - 1})")
        if len(ids) > self.limits.max_result_ids:
            raise RequestError("ids", f"at most {self.limits.max_result_ids} ids per request")
        ids = [i for i, down in zip(ids, served.taken_down(ids)) if not down]  # a taken-down row is not listed
        metadata = self._rows(served, ids)
        return web.json_response([{"id": i, "metadata": m} for i, m in zip(ids, metadata)])

    async def knn_service(self, request):
        body = await self._json(request)
        served = self._index(body)
        modality = body.get("modality", "image")
        if modality not in MODALITIES:
            raise RequestError("modality", f"modality must be one of {list(MODALITIES)}, not {modality!r}")
        deduplicate, use_safety_model, use_violence_detector, use_mclip = (
            _flag(body, option) for option in ("deduplicate", "use_safety_model", "use_violence_detector", "use_mclip")
        )
        aesthetic_score = _optional_number(body, "aesthetic_score", int, RATINGS.start, RATINGS.stop - 1)
        aesthetic_weight = _optional_number(body, "aesthetic_weight", float, 0, 1)
        num_images = self._count(body, "num_images", 40, self.limits.max_num_images)
        num_result_ids = max(num_images, self._count(body, "num_result_ids", num_images, self.limits.max_result_ids))
        ignored = [
            option
            for option, asked, model in (
                ("use_safety_model", use_safety_model, served.safety),
                ("use_violence_detector", use_violence_detector, None),
                ("use_mclip", use_mclip, None),
                ("aesthetic_score", aesthetic_score is not None, served.aesthetic_embeddings),
            )
            if asked and model is None
        ]
        self._log_ignored(served.name, ignored)

        vector = await self._query_vector(body, served)
        if aesthetic_score is not None and served.aesthetic_embeddings is not None:
            weight = DEFAULT_AESTHETIC_WEIGHT if aesthetic_weight is None else aesthetic_weight
            vector = vector + weight * served.aesthetic_embeddings[aesthetic_score]
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
        drop_unsafe = use_safety_model and served.safety is not None
        searcher = served.searcher(modality, self.limits.max_batch)
        # Deduplication and the safety model drop some results: ask for more so that enough remain.
        k = min(num_result_ids * (1 + deduplicate + drop_unsafe), served.index.metadata.num_rows)
        similarities, ids = await searcher.submit((vector, k))  # taken-down rows left out
        found = ids >= 0
        similarities, ids = similarities[found], ids[found]
        if deduplicate:
            keep = await asyncio.to_thread(distinct, served.index, modality, ids)
            similarities, ids = similarities[keep], ids[keep]
        if drop_unsafe:
            keep = await asyncio.to_thread(served.safe, ids)
            similarities, ids = similarities[keep], ids[keep]
        similarities, ids = similarities[:num_result_ids], ids[:num_result_ids]
        rows = self._rows(served, ids[:num_images])
        results = [{**row, "id": int(i), "similarity": float(s)} for row, i, s in zip(rows, ids, similarities)]
        results += [{"id": int(i), "similarity": float(s)} for i, s in zip(ids[num_images:], similarities[num_images:])]
        return web.json_response(results, headers={IGNORED_HEADER: ", ".join(ignored)} if ignored else None)

    def _rows(self, served: ServedIndex, ids) -> list[dict]:
        """The metadata of `ids`, with `shard_url` (this server's address of the image in its shard, from its
        public URL, never from the request's Host header) when the index has shards: clip-retrieval's front end
        shows it with `--url_column shard_url`."""
        rows = served.index.rows(ids) if len(ids) else []
        if served.shards is not None:
            base = f"{self.limits.public_url}/images/{quote(served.name, safe='')}"
            for row, i in zip(rows, ids):
                row["shard_url"] = f"{base}/{int(i)}.jpg"
        return rows

    def _log_ignored(self, index: str, options: list[str]) -> None:
        for option in options:
            if (index, option) not in self.ignored_logged:
                self.ignored_logged.add((index, option))
                log.warning("index %r has no model for %s: ignored, as clip-retrieval ignores it", index, option)

    async def _query_vector(self, body: dict, served: ServedIndex) -> np.ndarray:
        encoder = served.encoder
        if body.get("text"):
            if not isinstance(body["text"], str):
                raise RequestError("text", "text must be a string")
            return await encoder.text(body["text"])
        if body.get("image"):
            if not isinstance(body["image"], str):
                raise RequestError("image", "image must be a base64 string")
            try:
                data = base64.b64decode(body["image"].split(",")[-1], validate=True)
            except (binascii.Error, ValueError) as error:
                raise RequestError("image", f"image is not valid base64: {error}") from None
            return await encoder.image(data, "image")
        if body.get("image_url"):
            return await encoder.image(await self.remote.fetch(body["image_url"]), "image_url")
        if body.get("embedding_input"):
            vector = body["embedding_input"]
            if not isinstance(vector, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector
            ):
                raise RequestError("embedding_input", "embedding_input must be a list of numbers")
            if len(vector) != encoder.dim:
                raise RequestError(
                    "embedding_input", f"embedding_input has {len(vector)} values, the index {encoder.dim}"
                )
            try:
                vector = np.asarray(vector, dtype=np.float32)
            except OverflowError:
                raise RequestError("embedding_input", "embedding_input holds a number too large for float32") from None
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0:
                raise RequestError("embedding_input", "embedding_input must be finite and not all zero")
            return vector / norm
        raise RequestError("text", "no query: give one of text, image (base64), image_url or embedding_input")


def _flag(body: dict, option: str) -> bool:
    value = body.get(option)
    if value is not None and not isinstance(value, bool):
        raise RequestError(option, f"{option} must be true, false or null, not {value!r}")
    return bool(value)


def _optional_number(body: dict, option: str, kind: type, low: float, high: float):
    """clip-retrieval's optional numbers: null or "" (unset), else a number or a numeric string in [low, high]
    (an integer where `kind` is int)."""
    value = body.get(option)
    if value is None or value == "":
        return None
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except (ValueError, OverflowError):  # OverflowError: an integer beyond float's range, such as 10**400
        number = None
    if number is None or not low <= number <= high or (kind is int and not number.is_integer()):
        wanted = "an integer" if kind is int else "a number"
        raise RequestError(option, f'{option} must be {wanted} from {low} to {high} or "", not {value!r}')
    return kind(number)


class MalformedRequestsInOneLine(logging.Filter):
    """aiohttp logs each request it cannot parse at ERROR with a traceback: a client's mistake, so one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "%s: %s %s", (record.getMessage(), error.code, " ".join(error.message.split()))
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def serve(indices_json: Path | str, host: str, port: int, limits: Limits) -> None:
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestsInOneLine())
    single_threaded_search()  # for the event loop's own faiss calls (dedup's reconstruct), as in searchers
    if not limits.public_url:
        name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
        limits = replace(limits, public_url=f"http://{name}:{port}")
    limits = replace(limits, public_url=limits.public_url.rstrip("/"))
    service = Service(load_indices(indices_json, limits), limits)
    log.info("serving %s on http://%s:%d", list(service.indices), host, port)
    # aiohttp closes a connection that has not sent a whole request header when its keep-alive timer ends (set when
    # it connects and after each response): that timer is the header timeout, for idle connections too.
    web.run_app(
        service.app(),
        host=host,
        port=port,
        print=None,
        access_log=None,
        keepalive_timeout=limits.header_timeout_seconds,
    )
