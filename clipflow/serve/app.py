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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiohttp import web

from clipflow.index.folder import MODALITIES, single_threaded_search
from clipflow.serve.errors import RequestError
from clipflow.serve.indices import ServedIndex, distinct, load_indices
from clipflow.serve.metrics import Metrics
from clipflow.serve.remote import RemoteImages
from clipflow.shards import DamagedShard

log = logging.getLogger(__name__)
WEB_PAGE = Path(__file__).parent / "web" / "index.html"
UNSUPPORTED_OPTIONS = ("use_safety_model", "use_violence_detector", "use_mclip")


@dataclass
class Limits:
    max_num_images: int = 1000
    max_result_ids: int = 10000
    max_body_bytes: int = 10 * 2**20
    allow_private_urls: bool = False
    image_url_timeout: float = 10
    max_batch: int = 64
    precision: str = "auto"


class Service:
    def __init__(self, indices: dict[str, ServedIndex], limits: Limits):
        self.indices, self.limits = indices, limits
        self.started = time.time()
        self.monitor = Metrics(indices)
        self.remote = RemoteImages(limits.max_body_bytes, limits.allow_private_urls, limits.image_url_timeout)

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
        await self.remote.close()

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
        self.monitor.observe(endpoint, response.status, time.perf_counter() - started)
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
        return web.Response(body=self.monitor.exposition(), content_type="text/plain")

    async def image(self, request):
        served = self.indices.get(request.match_info["index"])
        try:
            data = served and await asyncio.to_thread(served.image_bytes, int(request.match_info["id"]))
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
            keep = await asyncio.to_thread(distinct, served.index, modality, ids)
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
            vector = np.asarray(vector, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0:
                raise RequestError("embedding_input", "embedding_input must be finite and not all zero")
            return vector / norm
        raise RequestError("text", "no query: give one of text, image (base64), image_url or embedding_input")


def serve(indices_json: Path | str, host: str, port: int, limits: Limits) -> None:
    single_threaded_search()  # for the event loop's own faiss calls (dedup's reconstruct), as in searchers
    service = Service(load_indices(indices_json, limits.max_batch, limits.precision), limits)
    log.info("serving %s on http://%s:%d", list(service.indices), host, port)
    web.run_app(service.app(), host=host, port=port, print=None, access_log=None)
