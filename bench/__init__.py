"""stdd benchmarks: `python -m bench [--quick] [--json]` (issue #8).

Design note — a shared, noisy 2-core machine:

* every goal is a *ratio measured side by side in one run* where it can be (the daemon and the
  plain script on the same frames, 2 workers and 1 worker, the local pool and Dask), repeated and
  reported as the median of the per-repeat ratios; absolute times are context only;
* every key is present in every mode; a measure that cannot run (a component not installed,
  HOTPANTS absent, a broker that does not start) records ``null`` and the reason — never a
  number it did not measure;
* the inputs are the project's own synthetic frames (:mod:`stdd.synth`), made once per run in a
  scratch folder, with their local catalogue and template, so nothing touches the network;
* where a goal is missed, the key's note says what limits it, with a profile (cProfile top
  functions, or the per-stage seconds).

Layout: :mod:`bench.runner` (registry of keys and goals, runs the measures, writes
``bench/results/latest.json`` and ``latest.md``), :mod:`bench.common` (context, statistics,
process memory), :mod:`bench.inputs` (synthetic fields), :mod:`bench.harness` (a real daemon in
a subprocess), :mod:`bench.plain_script` (the honest denominator), and one module per measure.
"""
