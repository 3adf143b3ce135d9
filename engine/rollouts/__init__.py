"""Rollouts: move traffic between model versions, judge experiments, guard canaries.

* :mod:`engine.rollouts.routing` - shadow / canary / A/B / promote / rollback by editing
  ``ROOT/<model>/config.yaml``'s ``routing`` (what serving reads on its next scan)
* :mod:`engine.rollouts.history` - ``ROOT/<model>/rollouts.jsonl``, every change with before/after
* :mod:`engine.rollouts.outcomes` - impressions and clicks per variant (the label join, offline)
* :mod:`engine.rollouts.stats` - Wilson intervals, the two-proportion z-test, mSPRT, sample sizes
* :mod:`engine.rollouts.verdict` - the A/B verdict in plain words
* :mod:`engine.rollouts.scrape` - serving's Prometheus counters, deltas, ``histogram_quantile``
* :mod:`engine.rollouts.guard` - automatic canary rollback on error rate / p99 latency
* :mod:`engine.rollouts.cli` - ``rtml rollout ...``
"""
