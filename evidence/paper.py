"""The paper's Tables 1-5 as data, transcribed from Liu, Liu, Cohan 2024, "Understanding Reference Policies in Direct
Preference Optimization", arXiv 2407.13709 (Findings of NAACL 2025). Win rates are AlpacaEval 2's length-controlled
win rates (%) against gpt-4-1106-preview's outputs, judged by gpt-4-1106-preview; ranking accuracies are shares of
UltraFeedback validation pairs. DEGENERATE marks a setting the paper reports as degenerate (no number)."""

from __future__ import annotations

CITATION = "Liu, Liu, Cohan 2024, arXiv 2407.13709"
DEGENERATE = "degenerate"
SFT = None  # the row of the SFT model itself (no DPO), where a table's rows are betas

# Table 1 (RQ1): LC win rate by beta, DPO against the SFT model as reference.
TABLE1 = {
    "columns": ("mistral-7b", "tulu-2-7b"),
    "rows": {
        SFT: (7.57, 8.50),
        0.1: (14.03, 9.38),
        0.05: (13.29, 9.96),
        0.02: (16.06, 10.46),
        0.01: (16.25, 7.86),
        0.005: (12.36, DEGENERATE),
    },
}

# Table 2 (RQ1): ranking accuracy on validation pairs, of the implicit reward r = beta log(p_theta / p_ref) and of
# the policy p_theta itself (sequence log-prob of chosen above rejected), by beta.
TABLE2 = {
    "columns": ("mistral-7b r", "mistral-7b p", "tulu-2-7b r", "tulu-2-7b p"),
    "rows": {
        SFT: (0.500, 0.435, 0.500, 0.439),
        0.1: (0.718, 0.495, 0.773, 0.462),
        0.05: (0.744, 0.513, 0.778, 0.483),
        0.02: (0.746, 0.544, 0.766, 0.536),
        0.01: (0.751, 0.605, 0.758, 0.605),
        0.005: (0.766, 0.704, 0.750, 0.680),
    },
}

# Table 3 (RQ2, mistral-7b): each objective at its best beta: LC win rate, the policy's ranking accuracy, mean
# response length, beta.
TABLE3 = {
    "columns": ("LC win rate", "policy rank acc.", "length", "beta"),
    "rows": {
        "sft": (7.57, 0.435, 205.0, None),
        "dpo": (16.25, 0.605, 359.4, 0.01),
        "posterior": (12.84, 0.697, 744.5, 100),
        "likelihood": (13.63, 0.602, 389.3, 0.01),
    },
    "labels": {"sft": "SFT", "dpo": "DPO", "posterior": "Probability (posterior)", "likelihood": "Likelihood"},
}

# Table 4 (RQ3): LC win rate by beta, DPO against a stronger reference: Mistral-7B-Instruct-v0.2 (LC 20.55 on its
# own; the same family as mistral-7b-sft-beta) or Llama-3-70B-Instruct (34.40 on its own; another tokenizer).
TABLE4 = {
    "columns": ("mistral <- mistral-v0.2", "mistral <- llama3-70b", "tulu <- mistral-v0.2", "tulu <- llama3-70b"),
    "rows": {
        10: (18.74, 13.29, 7.61, 9.79),
        1: (20.25, 9.59, 7.85, 11.17),
        0.1: (19.58, 10.99, DEGENERATE, 10.31),
        0.01: (17.18, 15.37, DEGENERATE, 9.16),
        0.005: (15.34, 11.70, DEGENERATE, 3.29),
    },
}

# Table 5 (RQ3): the best LC win rate over beta of each reference. The last row is from the paper's appendix (not
# Table 5): mistral-7b trained with DPO against its own DPO-trained policy (beta 0.01) as reference.
TABLE5 = {
    "columns": ("mistral-7b", "tulu-2-7b"),
    "rows": {
        "sft": (7.57, 8.50),
        "self": (16.25, 10.46),
        "mistral-v0.2": (20.25, 7.85),
        "llama3-70b": (15.37, 11.17),
        "dpo-trained": (16.75, None),
    },
    "labels": {
        "sft": "SFT (no DPO)",
        "self": "self-reference (the SFT model)",
        "mistral-v0.2": "Mistral-7B-Instruct-v0.2",
        "llama3-70b": "Llama-3-70B-Instruct",
        "dpo-trained": "the policy's own DPO-trained model (appendix)",
    },
}
