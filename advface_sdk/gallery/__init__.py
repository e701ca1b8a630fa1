"""Protected galleries: AdvFace templates in a vector store (FAISS or Milvus), searched 1:N.

>>> from advface_sdk import Gallery
>>> with Gallery.create("gallery/", protector="fr128") as g:   # FAISS, exact search, one folder
...     g.enroll(ids, embeddings)
...     hits = g.search(probe_embeddings, k=5)                  # hits.ids, hits.scores (cosine)
"""

from .gallery import Gallery, SearchResult, protector_id
from .stores import STORES, VectorStore, list_stores, register_store

__all__ = ["Gallery", "SearchResult", "protector_id", "VectorStore", "STORES", "list_stores", "register_store"]
