"""`clipflow serve`: clip-retrieval's back-end HTTP API over the workflow's indices, and a web page.

Endpoints: GET /indices-list, POST /knn-service, POST /metadata (request and response shapes as in
clip-retrieval's clip_back), GET /health, GET /metrics (Prometheus), GET / (the search page) and
GET /images/{index}/{id}.jpg (the sample's JPEG read out of its shard). Concurrent queries are batched
through the encoders and the faiss search; indices and metadata are memory-mapped.
"""

import asyncio
import base64
import binascii
import errno
import io
import ipaddress
import json
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import prometheus_client
from aiohttp import ClientSession, ClientTimeout, TCPConnector, ThreadedResolver, web
from PIL import Image

from clipflow.batcher import MicroBatcher
from clipflow.errors import ClipflowError
from clipflow.searcher import MODALITIES, ClipIndex, ShardReader

log = logging.getLogger(__name__)
WEB_PAGE = Path(__file__).parent / "web" / "index.html"
DEDUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for near-duplicate results
UNSUPPORTED_OPTIONS = ("use_safety_model", "use_violence_detector", "use_mclip")
TEXT_CACHE_SIZE = 4096


@dataclass
class Limits:
    max_num_images: int = 1000
    max_result_ids: int = 10000
    max_body_bytes: int = 10 * 2**20
    allow_private_urls: bool = False
    image_url_timeout: float = 10
    max_batch: int = 64
    precision: str = "auto"


class RequestError(Exception):
    """A client mistake: answered with `status` and a JSON body naming the field."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


class Encoder:
    """One model shared by every index that uses it; texts and images batched across requests."""

    def __init__(self, manifest: Path, max_batch: int, precision: str):
        from clipflow.model import load_model

        self.model = load_model(manifest, precision=precision)
        self.dim = self.model.model.visual.output_dim
        self.texts = MicroBatcher(self._encode_texts, max_batch, "encode-text")
        self.images = MicroBatcher(self._encode_images, max_batch, "encode-image")
        self.text_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.model.encode_texts(self.model.tokenizer(texts)).cpu().numpy())

    def _encode_images(self, pixels: list) -> list[np.ndarray]:
        import torch

        return list(self.model.encode_images(torch.stack(pixels)).cpu().numpy())

    async def text(self, text: str) -> np.ndarray:
        if text in self.text_cache:
            self.text_cache.move_to_end(text)
            return self.text_cache[text]
        vector = await self.texts.submit(text)
        self.text_cache[text] = vector
        if len(self.text_cache) > TEXT_CACHE_SIZE:
            self.text_cache.popitem(last=False)
        return vector

    async def image(self, data: bytes, field: str) -> np.ndarray:
        pixels = await asyncio.to_thread(self._preprocess, data, field)
        return await self.images.submit(pixels)

    def _preprocess(self, data: bytes, field: str):
        try:
            with Image.open(io.BytesIO(data)) as image:
                return self.model.preprocess(image.convert("RGB"))
        except Exception as error:
            raise RequestError(field, f"not a decodable image ({type(error).__name__}: {error})") from error


@dataclass
class ServedIndex:
    name: str
    index: ClipIndex
    encoder: Encoder
    shards: ShardReader | None
    searchers: dict = field(default_factory=dict)

    def searcher(self, modality: str, max_batch: int) -> MicroBatcher:
        if modality not in self.searchers:
            faiss_index = self.index.index(modality)

            def search(queries):
                vectors = np.stack([vector for vector, _ in queries]).astype(np.float32)
                similarities, ids = faiss_index.search(vectors, max(k for _, k in queries))
                return [(s[:k], i[:k]) for (_, k), s, i in zip(queries, similarities, ids)]

            # OpenMP's thread count is per thread: set it in the thread that searches. Batched queries are
            # small, and OpenMP threads would spin between them, taking the event loop's CPU.
            self.searchers[modality] = MicroBatcher(
                search, max_batch, f"search-{self.name}-{modality}", lambda: faiss.omp_set_num_threads(1)
            )
        return self.searchers[modality]

    def image_bytes(self, row_id: int) -> bytes | None:
        if self.shards is None or not 0 <= row_id < self.index.metadata.num_rows:
            return None
        row = self.index.rows([row_id])[0]
        if not row.get("shard") or not row.get("key"):
            return None
        return self.shards.image_bytes(row["shard"], row["key"])


def load_indices(indices_json: Path | str, limits: Limits) -> dict[str, ServedIndex]:
    """indices.json: {"name": {"index": "results/index", "shards": "results/shards", "search_params": "nprobe=64"}};
    paths relative to it; shards and search_params (faiss ParameterSpace syntax, as autofaiss's index_param) optional.
    """
    path = Path(indices_json)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ClipflowError(f"{path}: cannot read the indices file: {error}") from error
    if not isinstance(spec, dict) or not spec:
        raise ClipflowError(f'{path}: expected {{"name": {{"index": FOLDER, "shards": FOLDER}}, ...}}')
    encoders: dict[bytes, Encoder] = {}
    served = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), str):
            raise ClipflowError(f'{path}: index {name!r} needs {{"index": FOLDER}} (and optionally "shards")')
        unknown = set(entry) - {"index", "shards", "search_params"}
        if unknown:
            raise ClipflowError(f"{path}: index {name!r} has unknown keys {sorted(unknown)}")
        index = ClipIndex(path.parent / entry["index"])
        for modality in MODALITIES:
            faiss_index = index.index(modality)  # fail at start, not at the first query
            if entry.get("search_params"):
                try:
                    faiss.ParameterSpace().set_index_parameters(faiss_index, entry["search_params"])
                except RuntimeError as error:
                    raise ClipflowError(f"{path}: index {name!r}: search_params: {error}") from None
        manifest = index.model_manifest.read_bytes()
        if manifest not in encoders:
            encoders[manifest] = Encoder(index.model_manifest, limits.max_batch, limits.precision)
        shards = ShardReader(path.parent / entry["shards"]) if entry.get("shards") else None
        served[name] = ServedIndex(name, index, encoders[manifest], shards)
    return served


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


class Service:
    def __init__(self, indices: dict[str, ServedIndex], limits: Limits):
        self.indices, self.limits = indices, limits
        self.started = time.time()
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "clipflow_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = prometheus_client.Histogram(
            "clipflow_request_seconds",
            "request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        vectors = prometheus_client.Gauge(
            "clipflow_index_vectors", "vectors per index", ["index"], registry=self.registry
        )
        for name, served in indices.items():
            vectors.labels(name).set(served.index.metadata.num_rows)
        self.registry.register(_BatcherCollector(self))
        self.session: ClientSession | None = None

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
        app.router.add_route("OPTIONS", "/{path:.*}", self.preflight)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app) -> None:
        if self.session:
            await self.session.close()

    @web.middleware
    async def _errors_and_metrics(self, request, handler):
        endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
        started = time.perf_counter()
        try:
            response = await handler(request)
        except RequestError as error:
            response = web.json_response({"error": error.message, "field": error.field}, status=error.status)
        except web.HTTPRequestEntityTooLarge:
            message = f"request body over the {self.limits.max_body_bytes} byte limit"
            response = web.json_response({"error": message, "field": "body"}, status=413)
        except web.HTTPException as error:
            response = web.json_response({"error": error.reason, "field": None}, status=error.status)
        except Exception:
            log.exception("error answering %s", request.path)
            response = web.json_response({"error": "internal error, see the server log", "field": None}, status=500)
        self.requests.labels(endpoint, str(response.status)).inc()
        self.latency.labels(endpoint).observe(time.perf_counter() - started)
        # clip-retrieval's front end is often hosted elsewhere and calls the API across origins.
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _json(self, request) -> dict:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError("body", f"malformed JSON: {error}") from None
        if not isinstance(body, dict):
            raise RequestError("body", "the body must be a JSON object")
        return body

    def _index(self, body: dict) -> ServedIndex:
        name = body.get("indice_name")
        if name is None:
            return next(iter(self.indices.values()))
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

    async def preflight(self, request):
        headers = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": "Content-Type"}
        return web.Response(status=204, headers=headers)

    async def page(self, request):
        return web.FileResponse(WEB_PAGE)

    async def indices_list(self, request):
        return web.json_response(list(self.indices))

    async def health(self, request):
        indices = {name: served.index.metadata.num_rows for name, served in self.indices.items()}
        return web.json_response({"status": "ok", "uptime_s": time.time() - self.started, "indices": indices})

    async def metrics(self, request):
        return web.Response(body=prometheus_client.generate_latest(self.registry), content_type="text/plain")

    async def image(self, request):
        served = self.indices.get(request.match_info["index"])
        data = served and await asyncio.to_thread(served.image_bytes, int(request.match_info["id"]))
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
        metadata = served.index.rows(ids) if ids else []
        return web.json_response([{"id": i, "metadata": m} for i, m in zip(ids, metadata)])

    async def knn_service(self, request):
        body = await self._json(request)
        served = self._index(body)
        for option in UNSUPPORTED_OPTIONS:
            if body.get(option):
                raise RequestError(option, f"{option}: this server has no such model; send false or leave it out")
        if body.get("aesthetic_score") not in (None, ""):
            raise RequestError("aesthetic_score", 'aesthetic_score: this server has no aesthetic model; send ""')
        modality = body.get("modality", "image")
        if modality not in MODALITIES:
            raise RequestError("modality", f"modality must be one of {list(MODALITIES)}, not {modality!r}")
        deduplicate = body.get("deduplicate", False)
        if not isinstance(deduplicate, bool):
            raise RequestError("deduplicate", "deduplicate must be true or false")
        num_images = self._count(body, "num_images", 40, self.limits.max_num_images)
        num_result_ids = max(num_images, self._count(body, "num_result_ids", num_images, self.limits.max_result_ids))

        vector = await self._query_vector(body, served)
        searcher = served.searcher(modality, self.limits.max_batch)
        # Deduplication drops some results: ask for more so that enough remain.
        k = min(num_result_ids * (2 if deduplicate else 1), served.index.metadata.num_rows)
        similarities, ids = await searcher.submit((vector, k))
        found = ids >= 0
        similarities, ids = similarities[found], ids[found]
        if deduplicate:
            keep = await asyncio.to_thread(_distinct, served.index.index(modality), ids)
            similarities, ids = similarities[keep], ids[keep]
        similarities, ids = similarities[:num_result_ids], ids[:num_result_ids]
        rows = served.index.rows(ids[:num_images]) if len(ids) else []
        results = [{**row, "id": int(i), "similarity": float(s)} for row, i, s in zip(rows, ids, similarities)]
        results += [{"id": int(i), "similarity": float(s)} for i, s in zip(ids[num_images:], similarities[num_images:])]
        return web.json_response(results)

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
            return await encoder.image(await self._fetch(body["image_url"]), "image_url")
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
            vector = np.asarray(vector, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0:
                raise RequestError("embedding_input", "embedding_input must be finite and not all zero")
            return vector / norm
        raise RequestError("text", "no query: give one of text, image (base64), image_url or embedding_input")

    async def _fetch(self, url) -> bytes:
        """The bytes at an http(s) image_url, following at most 5 redirects, each hop checked."""
        from yarl import URL

        if not isinstance(url, str):
            raise RequestError("image_url", "image_url must be a string")
        if self.session is None:
            resolver = ThreadedResolver() if self.limits.allow_private_urls else PublicResolver()
            self.session = ClientSession(
                connector=TCPConnector(resolver=resolver), timeout=ClientTimeout(total=self.limits.image_url_timeout)
            )
        for _ in range(6):
            parsed = URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise RequestError("image_url", f"image_url must be an http(s) URL, not {url!r}")
            ip = _literal_ip(parsed.host)
            if ip is not None and not ip.is_global and not self.limits.allow_private_urls:
                raise RequestError("image_url", f"image_url points at a private address ({parsed.host})")
            try:
                async with self.session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = str(parsed.join(URL(response.headers["Location"])))
                        continue
                    if response.status != 200:
                        raise RequestError("image_url", f"image_url answered HTTP {response.status}")
                    data = await response.content.read(self.limits.max_body_bytes + 1)
                    if len(data) > self.limits.max_body_bytes:
                        raise RequestError("image_url", f"image_url is over {self.limits.max_body_bytes} bytes")
                    return data
            except RequestError:
                raise
            except Exception as error:
                raise RequestError("image_url", f"cannot fetch image_url: {type(error).__name__}: {error}") from None
        raise RequestError("image_url", "image_url redirects more than 5 times")


class _BatcherCollector:
    """Calls and queries per batcher: their ratio shows how well concurrent queries are batched."""

    def __init__(self, service: "Service"):
        self.service = service

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        calls = CounterMetricFamily("clipflow_batch_calls", "encoder or search calls", labels=["stage"])
        items = CounterMetricFamily("clipflow_batch_queries", "queries served by those calls", labels=["stage"])
        batchers = {}
        for served in self.service.indices.values():
            batchers[f"encode_text/{id(served.encoder)}"] = ("encode_text", served.encoder.texts)
            batchers[f"encode_image/{id(served.encoder)}"] = ("encode_image", served.encoder.images)
            for modality, searcher in served.searchers.items():
                batchers[f"search/{served.name}/{modality}"] = (f"search_{served.name}_{modality}", searcher)
        totals = {}
        for stage, batcher in batchers.values():
            total = totals.setdefault(stage, [0, 0])
            total[0], total[1] = total[0] + batcher.calls, total[1] + batcher.items
        for stage, (call_count, item_count) in sorted(totals.items()):
            calls.add_metric([stage], call_count)
            items.add_metric([stage], item_count)
        yield calls
        yield items


def _distinct(faiss_index, ids: np.ndarray) -> np.ndarray:
    """Positions of results kept when each drops if it is a near-duplicate of a better-ranked kept one."""
    if len(ids) < 2:
        return np.arange(len(ids))
    vectors = faiss_index.reconstruct_batch(ids.astype(np.int64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    similar = (vectors @ vectors.T) >= DEDUPLICATE_COSINE
    kept = []
    dropped = np.zeros(len(ids), dtype=bool)
    for position in range(len(ids)):
        if dropped[position]:
            continue
        kept.append(position)
        dropped |= similar[position]
    return np.array(kept, dtype=np.int64)


def serve(indices_json: Path | str, host: str, port: int, limits: Limits) -> None:
    faiss.omp_set_num_threads(1)  # for the event loop's own faiss calls (dedup's reconstruct), as in searchers
    service = Service(load_indices(indices_json, limits), limits)
    log.info("serving %s on http://%s:%d", list(service.indices), host, port)
    web.run_app(service.app(), host=host, port=port, print=None, access_log=None)
