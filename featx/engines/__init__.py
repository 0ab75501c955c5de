"""Engines spread stage 1 (and the heads' searches) beyond one process: `featx.engines.ray` on Ray.

The local engine is `featx.runner` itself. An engine module imports its framework only when it
runs, so `import featx` and `featx --help` never load Ray.
"""
