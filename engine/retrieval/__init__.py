"""Retrieval: the item index behind ``Recommend`` (FAISS main segment + exact delta + tombstones).

* :mod:`engine.retrieval.config` - :class:`IndexConfig`
* :mod:`engine.retrieval.catalog` - :class:`ItemMeta`
* :mod:`engine.retrieval.backends` - which FAISS index (CPU/GPU), thread pinning
* :mod:`engine.retrieval.segments` - the built main segment and the exact delta
* :mod:`engine.retrieval.index` - :class:`ItemIndex` (upsert / remove / search / rebuild)
* :mod:`engine.retrieval.snapshot` - save / load for fast restarts
* :mod:`engine.retrieval.stream` - :class:`ItemStreamUpdater` (items topic -> index)
* :mod:`engine.retrieval.evaluation` - Recall@K against exact search

See docs/retrieval.md.
"""
