"""autoprune's benchmarks, apart from the package: each backs a number README.md or docs/BENCHMARKS.md states.

Run one from the repository root, e.g. ``.venv/bin/python benchmarks/surgery.py --help``:

* ``minilm_sst2.py``: the reference search on MiniLM-L6 / SST-2 against random search and a uniform sweep.
* ``surgery.py``: measured speedup against FLOPs reduction of structured surgery, accuracy right after pruning.
* ``search_overhead.py``: what the driver, Ray and the storage add around a trial.
* ``samplers.py``: Optuna samplers on real trials of a cheap space, or on a surrogate of the reference space.
* ``int8.py``: what dynamic int8 quantization costs the dense baseline.

Each writes its numbers as JSON to ``docs/results/<benchmark>.json`` (see ``common.py``).
"""
