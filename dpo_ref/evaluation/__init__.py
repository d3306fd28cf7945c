"""Evaluation: sample, judge, length-control, KL and ranking accuracy; AlpacaEval files in and out."""
