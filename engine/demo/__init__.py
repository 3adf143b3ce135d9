"""``rtml demo``: the guided tour (:mod:`engine.demo.tour`) and its report (:mod:`engine.demo.report`).

:func:`run_demo` is what ``rtml demo`` runs; :func:`~engine.demo.report.write_report`
renders a :class:`~engine.demo.report.DemoResults` as markdown with plots.
"""

from engine.demo.tour import run_demo

__all__ = ["run_demo"]
