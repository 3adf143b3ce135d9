"""Offline side of Recommend: funnel evaluation (:mod:`.evaluation`) and a synthetic world with
trained, registered models (:mod:`.synthetic`) for tests, evaluation and benchmarks."""
