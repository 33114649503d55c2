"""Test helpers that ship with the package: a loopback RunPod serverless simulator (:mod:`hpo.testing.runpod_sim`).

Nothing here is imported by ``import hpo``; it is for tests, benchmarks and local experiments.
"""
