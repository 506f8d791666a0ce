"""`synth view RUN`: a local web page over a run's store (funnel, rows, pairs, scores, rounds)."""
