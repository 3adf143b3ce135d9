"""Recommend: user tower -> FAISS retrieval -> ranker -> re-ranking -> exploration (docs/recommend.md).

Modules: :mod:`.config` (the ``--recommend`` file), :mod:`.inputs` (model inputs from registered
layouts), :mod:`.store` (the two Redis reads), :mod:`.funnel` (the stages), :mod:`.rerank`,
:mod:`.exploration`, :mod:`.popular`, :mod:`.metrics`, :mod:`.service` (the gRPC servicer).
"""
