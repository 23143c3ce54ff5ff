"""Searching a layout space: declarative spaces, the framework capability table, objectives, samplers and
exhaustive enumeration.
"""
