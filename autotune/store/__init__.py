"""Persistence: autotune's tables beside Optuna's, the shared trial budget, trial mirroring and stored
calibration profiles.
"""
