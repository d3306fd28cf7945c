"""An objective grid's loss settings: each refused, in one line naming the key and what reads it, where the loss does
not read it; and what a valid grid hands the trainer."""

import re
from pathlib import Path

import pytest
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import ObjectiveGrid, expand, load_experiment

ROOT = Path(__file__).resolve().parent.parent
BAD = [
    ("{name: dpo, betas: [0.1], label_smoothing: 0.1}", "label_smoothing: only TRL's loss types take it; 'dpo'"),
    ("{name: simpo, betas: [0.1], loss_weights: [1.0]}", "loss_weights: only TRL's loss types take it"),
    ("{name: sigmoid+sft_loss, betas: [0.1]}", "a mix needs a `label`"),
    ("{name: sigmoid+sft_loss, label: m, betas: [0.1], loss_weights: [1.0]}", "loss_weights: 1 weights for 2"),
    ("{name: sigmoid+sigmoid, label: m, betas: [0.1]}", "unknown objective 'sigmoid+sigmoid'"),
    ("{name: sft, betas: [0.1]}", "unknown objective 'sft'"),
    ("{name: hinge, betas: [0.1], label_smoothing: 0.1}", "label_smoothing: read only by robust, exo_pair"),
    ("{name: robust, betas: [0.1], label_smoothing: 0.5}", "label_smoothing"),
    ("{name: exo_pair, betas: [0.1]}", "exo_pair needs label_smoothing > 0"),
    ("{name: bco_pair, betas: [0.1], f_divergence: forward_kl}", "f_divergence: TRL generalises only"),
    ("{name: sigmoid, betas: [0.1], f_alpha: 0.3}", "f_alpha: read only with f_divergence: alpha_divergence"),
    ("{name: hinge, betas: [0.1], discopop_tau: 0.1}", "discopop_tau: read only by discopop"),
    ("{name: sigmoid, betas: [0.1], ld_alpha: 0.5}", "ld_alpha: LD-DPO needs per-token reference log-probs"),
    ("{name: dpo, betas: [0.1], alpha: 0.5}", "alpha: read only by beta_dpo and alpha_dpo"),
    ("{name: alpha_dpo, betas: [0.1], rho: 0.5}", "rho: read only by beta_dpo"),
    ("{name: sigmoid, label: a/b, betas: [0.1]}", "label"),
    ("[{name: dpo, betas: [0.1]}, {name: sigmoid, label: dpo, betas: [0.1]}]", "each objective once"),
]


@pytest.mark.parametrize("grids, says", BAD)
def test_a_setting_the_loss_does_not_read_is_refused_in_one_line(tmp_path, grids, says):
    grids = grids if grids.startswith("[") else f"[{grids}]"
    args = ["compare-objectives", "--dry-run", "--out", str(tmp_path), "--set", f"objectives={grids}"]
    for s in TINY_WORLD:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --set objectives=") and says in lines[0], result.stderr
    assert not tmp_path.joinpath("rq2_compare_objectives").exists()


def test_a_grid_hands_the_trainer_trls_settings_or_its_own_params():
    grids = (
        "[{name: sigmoid+bco_pair+sft_loss, label: mpo, loss_weights: [0.8, 0.2, 1.0], betas: [0.1]},"
        " {name: sigmoid, label: dpo-ajd, f_divergence: alpha_divergence, f_alpha: 0.3, betas: [0.1]},"
        " {name: beta_dpo, rho: 0.1, betas: [0.1]}, {name: dpo, betas: [0.1]}]"
    )
    exp = load_experiment(ROOT / "experiments/rq2_compare_objectives/default.yaml", [f"objectives={grids}"])
    runs = {r.run_id: r for r in expand(exp)}
    mpo, ajd, beta, dpo = (runs[f"{n}-sft-b0.1-s0"] for n in ("mpo", "dpo-ajd", "beta_dpo", "dpo"))
    assert (mpo.objective, mpo.loss, mpo.trl["loss_type"], mpo.trl["loss_weights"]) == (
        "mpo", "sigmoid+bco_pair+sft_loss", ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    )  # fmt: skip
    assert (ajd.trl["f_divergence_type"], ajd.trl["f_alpha_divergence_coef"]) == ("alpha_divergence", 0.3)
    assert beta.params == {"alpha": 0.6, "rho": 0.1} and beta.trl is None
    assert dpo.trl is None and dpo.params is None and dpo.loss is None
    assert ObjectiveGrid(name="alpha_dpo", betas=[1.0]).params() == {"alpha": 0.2}


def test_an_objective_trains_against_the_references_it_names():
    refs = "references=[{name: sft, model: world:sft}, {name: strong, model: world:strong-same}]"
    grids = "objectives=[{name: dpo, betas: [0.1]}, {name: hinge, betas: [0.1], references: [strong]}]"
    exp = load_experiment(ROOT / "experiments/rq3_swap_reference/default.yaml", [refs, grids])
    assert [r.run_id for r in expand(exp)] == ["sft", "dpo-sft-b0.1-s0", "dpo-strong-b0.1-s0", "hinge-strong-b0.1-s0"]


@pytest.mark.parametrize(
    "grid, says",
    [
        ("{name: dpo, betas: [0.1], references: [nope]}", "objectives.0.references: ['nope'] not among"),
        ("{name: dpo, betas: [0.1], references: [sft, sft]}", "each reference once"),
        ("{name: simpo, betas: [0.1], references: [sft]}", "references: simpo trains against no listed reference"),
    ],
)
def test_named_references_must_be_listed_once_and_read(grid, says):
    from dpo_ref.errors import UserError

    with pytest.raises(UserError, match=re.escape(says)):
        load_experiment(ROOT / "experiments/rq2_compare_objectives/default.yaml", [f"objectives=[{grid}]"])
