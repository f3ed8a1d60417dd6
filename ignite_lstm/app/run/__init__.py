"""Runs of the application: command line, run folders, processes, preflight, training, evaluate, extract."""
