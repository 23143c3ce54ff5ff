"""Running a study: resolving a spec into a problem, the Optuna driver for expensive fidelities, trial outcomes,
multi-fidelity stages and the dispatch layer (the only door to ``workers``).
"""
