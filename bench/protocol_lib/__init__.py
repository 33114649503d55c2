"""The parts of bench/protocol.py (the benchmark protocol of issue 16): settings, the method-runs (each in its own
process: child, controlled, native, kerastuner_runs, hpo_method, loop, record), the parent's runner, the evaluation
of saved models, the statistics (pure functions) and the report."""
