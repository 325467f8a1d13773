"""Tooling outside the production path: the offline commands and the benchmarks.

``featsieve generate`` (the seeded synthetic stream, synthetic.py), ``featsieve score``
(offline CSV/JSONL scoring, tabular.py), ``featsieve evaluate`` (evaluate.py,
timeorder.py) and ``featsieve bench`` (bench*.py). These modules may import anything of
daemon/, connectors/ and models/; no production module imports them (an import-linter
contract in pyproject.toml checks it): daemon/cli.py loads them inside the subcommand
handlers only, so ``featsieve run`` never imports this package.
"""
