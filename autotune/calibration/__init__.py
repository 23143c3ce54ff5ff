"""Calibration: fitting hardware profiles to microbenchmarks, real training steps and a study's measured trials."""
