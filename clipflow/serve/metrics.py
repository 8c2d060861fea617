"""Prometheus metrics: requests by endpoint and status, latency, vectors per index, and batching."""

import prometheus_client

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self, indices: dict):
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "clipflow_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = prometheus_client.Histogram(
            "clipflow_request_seconds", "request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        vectors = prometheus_client.Gauge(
            "clipflow_index_vectors", "vectors per index", ["index"], registry=self.registry
        )
        for name, served in indices.items():
            vectors.labels(name).set(served.index.metadata.num_rows)
        self.registry.register(_BatcherCollector(indices))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class _BatcherCollector:
    """Calls and queries per batcher: their ratio shows how well concurrent queries are batched."""

    def __init__(self, indices: dict):
        self.indices = indices

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        calls = CounterMetricFamily("clipflow_batch_calls", "encoder or search calls", labels=["stage"])
        items = CounterMetricFamily("clipflow_batch_queries", "queries served by those calls", labels=["stage"])
        batchers = {}
        for served in self.indices.values():
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
