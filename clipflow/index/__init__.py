"""Index: faiss indices over the embeddings and the index folder that search and serve read."""
