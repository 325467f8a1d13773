"""The meta-check: every test that once could not fail now fails on a build broken where it looks.

See tests/meta/mutants.py for the mutants and how they are applied (to a copy of the repository).
"""

from __future__ import annotations

import pytest

from tests.meta.mutants import MUTANTS, Mutant, apply, run


@pytest.mark.slow
@pytest.mark.broker  # some of the tests it runs need the broker
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_test_kills_its_mutant(mutant: Mutant, bootstrap: str) -> None:
    outcome = run(mutant)
    assert outcome.killed, f"{mutant.name} ({mutant.why}): {outcome.detail}"


def test_every_mutant_applies_once_to_the_code_as_it_is(tmp_path) -> None:
    """A mutant whose text no longer occurs would not test anything: each must apply exactly once."""
    from tests.meta.mutants import ROOT

    for mutant in MUTANTS:
        target = tmp_path / mutant.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / mutant.path).read_text())
        apply(mutant, tmp_path)
        assert mutant.new in target.read_text()
