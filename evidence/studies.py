"""The studies whose figures the docs quote: what each runs (the real `dporef` commands), where its results land, and
the title of its page in docs/results/."""

from __future__ import annotations

from dataclasses import dataclass, field

RQ2 = "experiments/rq2_compare_objectives"
SMOLLM2_HINT = "needs `make smollm2` first; tens of minutes each on a 2-core CPU"


@dataclass(frozen=True)
class Step:
    """One `dporef` command of a study: its arguments after `dporef` (without --out), the experiment directory it
    writes under --out (`<out>/<exp_name>/results.json`) and the files the page reads from there."""

    name: str
    args: tuple[str, ...]
    exp_name: str
    files: tuple[str, ...] = ("results.json",)


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    scale: str  # "world" (the embedded world, nothing downloaded) or "smollm2" (SmolLM2-135M-Instruct)
    steps: tuple[Step, ...]
    what: str  # one line: what it measures
    after: tuple[str, ...] = field(default=())  # studies whose output it reads (run first)

    def argv(self, step: Step, out: str) -> list[str]:
        """The exact command line of `step`, with `{out}` in its arguments replaced by the output directory."""
        return ["dporef", *(a.replace("{out}", out) for a in step.args), "--out", out]


STUDIES: dict[str, Study] = {
    s.key: s
    for s in [
        Study(
            "rq1_world",
            "RQ1 on the embedded world: DPO across beta",
            "world",
            (Step("sweep", ("sweep-beta",), "rq1_sweep_beta"),),
            "the default beta sweep (`experiments/rq1_sweep_beta/default.yaml`), the paper's Tables 1 and 2",
        ),
        Study(
            "rq2_world",
            "RQ2 on the embedded world: DPO against objectives without a reference",
            "world",
            (Step("compare", ("compare-objectives",), "rq2_compare_objectives"),),
            "DPO, posterior probability, likelihood, SimPO and IPO, each at its best beta (the paper's Table 3)",
        ),
        Study(
            "rq3_world",
            "RQ3 on the embedded world: stronger references",
            "world",
            (Step("swap", ("swap-reference",), "rq3_swap_reference"),),
            "DPO against the SFT model, a stronger same-family and a stronger other-family reference (Tables 4, 5)",
        ),
        Study(
            "family_world",
            "A graded family of references on the embedded world",
            "world",
            (Step("swap", ("swap-reference", "experiments/rq3_swap_reference/family.yaml"), "rq3_family"),),
            "eight references graded in strength and similarity; does similarity predict the gain?",
        ),
        Study(
            "tune_world",
            "Beta without a grid on the embedded world: tune-beta against a 9-point grid",
            "world",
            (
                Step("grid", ("sweep-beta", "experiments/rq1_sweep_beta/grid9.yaml"), "rq1_sweep_beta_grid9"),
                Step("tune", ("tune-beta", "--budget", "6"), "rq1_sweep_beta_tune", ("results.json", "tune.json")),
            ),
            "`dporef tune-beta --budget 6` over the default's beta range against the 9-point grid's best",
        ),
        Study(
            "reference_methods_world",
            "Ways of using a reference on the embedded world",
            "world",
            (Step("swap", ("swap-reference", "experiments/beyond/reference_methods.yaml"), "reference_methods"),),
            "fixed, TR-DPO and BEMA references, TRL's losses, beta-DPO, alpha-DPO and SimPO, each at its best beta",
        ),
        Study(
            "rq1_smollm2",
            "RQ1 on SmolLM2-135M-Instruct: DPO across beta",
            "smollm2",
            (Step("sweep", ("sweep-beta", "experiments/rq1_sweep_beta/smollm2.yaml"), "rq1_smollm2"),),
            f"DPO at beta 0.1 and 0.01 on instruction pairs ({SMOLLM2_HINT})",
        ),
        Study(
            "rq2_smollm2",
            "RQ2 on SmolLM2-135M-Instruct: DPO against objectives without a reference",
            "smollm2",
            (Step("compare", ("compare-objectives", f"{RQ2}/smollm2.yaml"), "rq2_smollm2"),),
            f"DPO, posterior probability and likelihood on instruction pairs ({SMOLLM2_HINT})",
        ),
        Study(
            "rq3_smollm2",
            "RQ3 on SmolLM2-135M-Instruct: a DPO-trained reference",
            "smollm2",
            (
                Step(
                    "swap",
                    (
                        "swap-reference",
                        "experiments/rq3_swap_reference/smollm2.yaml",
                        "--set",
                        "references.1.model={out}/rq1_smollm2/dpo-sft-b0.1-s0/policy",
                    ),
                    "rq3_smollm2",
                ),
            ),
            f"DPO against the SFT model and against rq1_smollm2's DPO policy at beta 0.1 ({SMOLLM2_HINT})",
            after=("rq1_smollm2",),
        ),
    ]
}

SCALES = {"world": "the embedded world (no download)", "smollm2": "SmolLM2-135M-Instruct (`make smollm2` first)"}


def select(only: list[str] | None) -> list[Study]:
    """The studies named in `only` (study keys, or a scale: `world`, `smollm2`; `all` or nothing: every study), in
    the order of STUDIES, with the studies they read from added; unknown names raise ValueError."""
    names = only or ["all"]
    unknown = [n for n in names if n not in STUDIES and n not in SCALES and n != "all"]
    if unknown:
        choices = ", ".join(["all", *SCALES, *STUDIES])
        raise ValueError(f"unknown study {', '.join(unknown)}; choose from {choices}")
    wanted = {k for k, s in STUDIES.items() if "all" in names or k in names or s.scale in names}
    for key in list(wanted):
        wanted |= set(STUDIES[key].after)
    return [s for k, s in STUDIES.items() if k in wanted]
