"""The studies whose figures the docs quote: what each runs (the real `dporef` commands), where its results land, and
the title of its page in docs/results/."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SMOLLM2 = "experiments/smollm2/study.yaml"
SMOLLM2_STRONG = "experiments/smollm2/strong.yaml"  # trains the study's `strong` reference (its references.1)
STRONG_POLICY = "{out}/smollm2_strong/dpo-sft-b0.5-s0/policy"
SMOLLM2_HINT = "needs `make smollm2` first"


@dataclass(frozen=True)
class Step:
    """One `dporef` command of a study: its arguments after `dporef` (without --out), the experiment directory it
    writes under --out (`<out>/<exp_name>/results.json`) and the files the page reads from there."""

    name: str
    args: tuple[str, ...]
    exp_name: str
    files: tuple[str, ...] = ("results.json",)
    # figures of the report copied beside the pages (docs/results/img/), each embedded in the page when present
    images: tuple[str, ...] = ("frontier.png",)
    pairs: bool = False  # whether the page shows the pairs' counts (the prepare stage's plan.json)


def step_results(data: dict, step: str | None = None) -> dict:
    """results.json of a study's data file: of the command `step`, else of its last command, the one that answers
    (earlier commands build what it reads, as SmolLM2's stronger reference)."""
    steps = data["steps"]
    return (steps[step] if step else list(steps.values())[-1])["files"]["results.json"]


def _sft(row: dict) -> bool:
    return row["objective"] == "sft"


def _dpo_against(row: dict, *references: str) -> bool:
    return row["objective"] == "dpo" and row["reference"] in references


def rq1_rows(row: dict, rows: list[dict]) -> bool:
    """RQ1: the SFT row and DPO against the SFT reference at every beta."""
    return _sft(row) or _dpo_against(row, "sft")


REFERENCE_FREE = ("posterior", "likelihood")


def rq2_rows(row: dict, rows: list[dict]) -> bool:
    """RQ2: the SFT row, posterior and likelihood, and DPO against the SFT reference at their betas (equal beta)."""
    betas = {r["beta"] for r in rows if r["objective"] in REFERENCE_FREE}
    return _sft(row) or row["objective"] in REFERENCE_FREE or (_dpo_against(row, "sft") and row["beta"] in betas)


def rq3_rows(row: dict, rows: list[dict]) -> bool:
    """RQ3: the SFT row and DPO against the SFT reference, the stronger same-family one and the Pre-DPO guide."""
    return _sft(row) or _dpo_against(row, "sft", "strong", "guide")


@dataclass(frozen=True)
class Question:
    """One research question a study answers from some of its rows: `keep(row, rows)` says whether a row (of
    results.json's `rows`, `by_setting` or `best`) is one of them; `best`: whether its page shows each method's best
    beta among them (where beta varies)."""

    key: str
    title: str
    text: str
    keep: Callable[[dict, list[dict]], bool]
    best: bool = True


SMOLLM2_QUESTIONS = (
    Question(
        "rq1",
        "RQ1: DPO across beta",
        "DPO against the SFT model (the self-reference) at each beta, the paper's Tables 1 and 2: win rate against the "
        "SFT model's own answers as beta falls, how far the policy drifts (KL), how long its answers get, and the "
        "ranking accuracy of the implicit reward against the policy's own.",
        rq1_rows,
    ),
    Question(
        "rq2",
        "RQ2: is the reference necessary?",
        "DPO against the SFT model beside the posterior probability (no reference at all) and the likelihood (the "
        "reference p_LM(y), the answer without its instruction), at equal beta and training budget, the paper's "
        "Table 3.",
        rq2_rows,
        best=False,
    ),
    Question(
        "rq3",
        "RQ3: a stronger reference of the same family",
        "DPO against the SFT model, against `strong`, SmolLM2 after DPO on four times the training prompts "
        f"(`{SMOLLM2_STRONG}`, its prompts drawn apart from this study's validation and test prompts; its own row is "
        "in the last section), and against `guide`, the policy `dpo-sft-b0.1-s0` trained on this study's pairs (a "
        "`kind: trained` reference, as Pre-DPO and the paper's appendix), at the same betas, the paper's Tables 4 "
        "and 5: does a stronger reference help, and does the best beta move? No other real LLM ships offline, so "
        "there is no other-family reference here.",
        rq3_rows,
    ),
)


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    scale: str  # "world" (the embedded world, nothing downloaded) or "smollm2" (SmolLM2-135M-Instruct)
    steps: tuple[Step, ...]
    what: str  # one line: what it measures
    after: tuple[str, ...] = field(default=())  # studies whose output it reads (run first)
    questions: tuple[Question, ...] = field(default=())  # its page: one section per question (else per command)

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
            (
                Step(
                    "swap",
                    ("swap-reference", "experiments/beyond/reference_methods.yaml"),
                    "reference_methods",
                    images=("frontier.png", "results.png"),
                ),
            ),
            "fixed, TR-DPO and BEMA references, TRL's losses, beta-DPO, alpha-DPO and SimPO, each at its best beta",
        ),
        Study(
            "smollm2",
            "RQ1-RQ3 on SmolLM2-135M-Instruct",
            "smollm2",
            (
                Step("strong", ("sweep-beta", SMOLLM2_STRONG), "smollm2_strong", images=(), pairs=True),
                Step(
                    "swap",
                    ("swap-reference", SMOLLM2, "--set", f"references.1.model={STRONG_POLICY}"),
                    "smollm2",
                    pairs=True,
                ),
            ),
            f"the paper's three questions in one experiment (`{SMOLLM2}`) on instruction pairs SmolLM2 samples and "
            f"the instruction checks judge: DPO across beta, DPO against reference-free objectives, DPO against a "
            f"stronger same-family reference ({SMOLLM2_HINT})",
            questions=SMOLLM2_QUESTIONS,
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
