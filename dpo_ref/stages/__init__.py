"""The three stages of a study: prepare (shared inputs on disk), run one (any run, in any process), report."""
