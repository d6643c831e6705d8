"""Stage 4: load two models as their servers do, run them on the same inputs, compare."""
