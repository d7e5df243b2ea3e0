"""Runtime on one rank: model, attention, activation offloading, train step. Imports torch."""
