"""Serve: clip-retrieval's back-end HTTP API and a search page over index folders."""
