"""Cost split: the terms add up to the episode's total; the windows split the unserved energy."""

from __future__ import annotations

import pytest

from pulsebms.experiments.cost_split import (
    TERMS,
    cost_split,
    format_split,
    main,
    split_windows,
)

STEPS = 24  # two hours of the 5-min plant


def test_terms_add_up_and_windows_split_the_unserved_energy() -> None:
    from pulsebms.agents.workflow import baseline_factories
    from pulsebms.experiments.train import held_factory

    rules = baseline_factories(["rule_soc"])
    policies = {
        "rule_soc": rules["rule_soc"],
        "rule_soc_held[import_cap]": held_factory(rules["rule_soc"], 900.0, "import_cap"),
        "idle": lambda env: _Idle(),
    }
    windows = split_windows(["0-1", "1-2"])
    table = cost_split("cold", policies, seeds=[100], windows_h=windows, max_steps=STEPS)
    for row in table.values():
        assert row["steps"] == STEPS
        parts = sum(row[name] for name, _ in TERMS if name != "total_eur")
        assert row["total_eur"] == pytest.approx(parts, rel=1e-9, abs=1e-12)
        assert row["unserved_kwh_0_1h"] + row["unserved_kwh_1_2h"] == pytest.approx(
            row["unserved_kwh"], abs=1e-12
        )
        assert row["violations"] == 0
    # a cold night: the idle fleet buys everything; the rule serves from the packs
    assert table["idle"]["degradation_eur"] < table["rule_soc"]["degradation_eur"]
    text = format_split({"cold": table})
    assert "| cold | idle |" in text
    assert "unserved_kwh_0_1h" in text


class _Idle:
    def act(self, observation: object) -> list[float]:
        return [0.0, 0.0, 0.0]


def test_bad_windows_are_refused_and_the_command_prints_the_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for bad in ("17", "19-17", "a-b", "20-25"):
        with pytest.raises(ValueError, match="window"):
            split_windows([bad])
    assert main(["--baselines", "rule_equal", "--seeds", "100", "--max-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "| cold | rule_equal |" in out
    assert "unserved_kwh_17_19h" in out
