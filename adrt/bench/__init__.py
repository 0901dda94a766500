"""Benchmarks of bundles (and of the torch models they came from): the harness behind `adrt bench`.

Kept apart from :mod:`adrt.runtime`, which only runs bundles: a deployed runtime needs none of this.
:mod:`~adrt.bench.harness` runs the interleaved rounds (``bench``, ``bench_many``),
:mod:`~adrt.bench.report` reads, compares and writes reports (Markdown: :mod:`~adrt.bench.report_md`,
HTML: :mod:`~adrt.bench.report_html`). Nothing is imported here, so a worker process stays small.
"""
